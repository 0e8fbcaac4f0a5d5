package invalidator

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts the invalidator runs. Each names one key, KEYS[1], so it
// runs on Redis Cluster like any single-key command. They are sent with
// EVALSHA; a server that does not have a script cached (a restarted Redis,
// a master that just took over, SCRIPT FLUSH) answers NOSCRIPT, and the
// commands it refused are sent again at once with EVAL, which caches it
// there. An ACL user therefore needs +evalsha and +eval, plus the commands
// each script calls: Redis checks those against the user too.

// incrIfExists increments KEYS[1] only if it exists, so that IncrPattern
// cannot recreate a key deleted between SCAN and INCR. It returns 0 for a
// missing key, never nil, which go-redis would report as redis.Nil. It
// calls EXISTS and INCR.
var incrIfExists = redis.NewScript(`if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) end return 0`)

// setVersion sets the version key KEYS[1] to the LSN ARGV[1], written as 16
// upper-case hex digits, unless the key already holds that LSN or a later
// one. It returns 1 when it set the key and 0 when it left it alone. It
// calls GET and SET.
//
//   - ARGV[2] = "1" leaves a missing key missing (a VersionPattern: SCAN
//     found the key, which may be gone since).
//   - ARGV[3] = "1" sets the key whatever LSN it holds (a resync).
//   - A value that is not 16 upper-case hex digits is replaced: a counter
//     left by incr before the rule moved to version, or a seed an
//     application wrote. Replacing it changes the key, which is what a
//     reader needs to see.
//   - The two values are compared as two 32-bit halves, which Lua's
//     doubles hold exactly: a 64-bit LSN does not fit a double, and Lua
//     compares strings with strcoll, which follows the server's locale.
//   - SET keeps the key's TTL (KEEPTTL, Redis 6.0 and later), as INCR does.
//
// Running it again with the same LSN changes nothing, so a transaction
// replayed after a crash leaves its version keys as they are.
var setVersion = redis.NewScript(`local cur = redis.call('GET', KEYS[1])
if not cur then
  if ARGV[2] == '1' then return 0 end
elseif ARGV[3] ~= '1' and #cur == 16 and not string.find(cur, '[^0-9A-F]') then
  local ch, nh = tonumber(string.sub(cur, 1, 8), 16), tonumber(string.sub(ARGV[1], 1, 8), 16)
  if ch > nh or (ch == nh and tonumber(string.sub(cur, 9), 16) >= tonumber(string.sub(ARGV[1], 9), 16)) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1`)

// queueScript adds s to pipe as EVALSHA, or as EVAL when eval is set (the
// server answered NOSCRIPT to the EVALSHA before).
func queueScript(ctx context.Context, pipe redis.Pipeliner, s *redis.Script, eval bool, keys []string, args ...any) *redis.Cmd {
	if eval {
		return s.Eval(ctx, pipe, keys, args...)
	}
	return s.EvalSha(ctx, pipe, keys, args...)
}

// noScript reports whether Redis refused an EVALSHA because it does not
// have the script cached.
func noScript(err error) bool { return redis.HasErrorPrefix(err, "NOSCRIPT") }
