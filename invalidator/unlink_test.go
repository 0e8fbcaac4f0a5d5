package invalidator

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// bulkKeys is the number of keys of BenchmarkApplyDel1M: one UPDATE of a
// million rows, each cached under item:<id>.
const bulkKeys = 1_000_000

// BenchmarkApplyDel1M deletes a million existing keys on a private
// redis-server, one op per million keys: with Apply, and, for the same
// keys on the same server, with redis-cli --pipe sending one key per
// UNLINK and 100 keys per UNLINK, which is as fast as a client can go.
// The keys are set again, untimed, before each op.
func BenchmarkApplyDel1M(b *testing.B) {
	srv := startRedis(b)
	dir := b.TempDir()
	keys := numberedKeys("item:", bulkKeys)
	fill := respFile(b, filepath.Join(dir, "mset"), "MSET", keys, 1000, "x")
	refill := func(b *testing.B) {
		b.Helper()
		b.StopTimer()
		redisPipe(b, srv, fill, len(keys)/1000)
		b.StartTimer()
	}

	b.Run("apply", func(b *testing.B) {
		inv, err := New(Options{URL: srv.URL()})
		if err != nil {
			b.Fatal(err)
		}
		defer inv.Close()
		batch := NewBatch()
		for _, k := range keys {
			batch.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: k})
		}
		batch.EndTx(0)
		for b.Loop() {
			refill(b)
			if err := inv.Apply(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
		}
		if st := inv.Stats(); st.Del != uint64(b.N*len(keys)) {
			b.Errorf("Stats().Del = %d, want %d", st.Del, b.N*len(keys))
		}
	})
	for _, per := range []int{1, 100} {
		file := respFile(b, filepath.Join(dir, "unlink"+strconv.Itoa(per)), "UNLINK", keys, per, "")
		b.Run("redis-cli-"+strconv.Itoa(per), func(b *testing.B) {
			for b.Loop() {
				refill(b)
				redisPipe(b, srv, file, len(keys)/per)
			}
		})
	}
}

// numberedKeys returns the n keys prefix0 to prefix<n-1>.
func numberedKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	return keys
}

// respFile writes to path, in the Redis protocol, the commands cmd that
// take keys per keys each, each key followed by value unless value is
// empty, and returns path.
func respFile(tb testing.TB, path, cmd string, keys []string, per int, value string) string {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	bulk := func(s string) {
		w.WriteString("$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n")
	}
	for len(keys) > 0 {
		n := min(per, len(keys))
		args := 1 + n
		if value != "" {
			args += n
		}
		w.WriteString("*" + strconv.Itoa(args) + "\r\n")
		bulk(cmd)
		for _, k := range keys[:n] {
			bulk(k)
			if value != "" {
				bulk(value)
			}
		}
		keys = keys[n:]
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// redisPipe sends the commands of file to srv with redis-cli --pipe, over
// TCP, and checks that Redis answered each of the n without an error.
func redisPipe(tb testing.TB, srv *localsvc.Redis, file string, n int) {
	tb.Helper()
	in, err := os.Open(file)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(srv.Port), "--pipe")
	cmd.Stdin = in
	out, err := cmd.CombinedOutput()
	if want := "errors: 0, replies: " + strconv.Itoa(n); err != nil || !strings.Contains(string(out), want) {
		tb.Fatalf("redis-cli --pipe < %s: %v, want %q in:\n%s", file, err, want, out)
	}
}
