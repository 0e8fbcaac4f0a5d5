package localsvc

import (
	"errors"
	"os"
	"os/exec"
	"strings"
)

// EnvRedisServer names the server binary that Redis nodes run: redis-server
// when it is unset, or another build of the same protocol, such as
// valkey-server. Its client is the name with "-server" changed to "-cli"
// (valkey-cli). CI's version matrix runs the same tests against each.
const EnvRedisServer = "PGINV_TEST_REDIS_SERVER"

// redisServer returns the path of the server binary EnvRedisServer names.
func redisServer() (string, error) {
	return redisBinary(RedisServerName())
}

// redisCLI returns the path of the client that goes with redisServer.
func redisCLI() (string, error) {
	return redisBinary(strings.TrimSuffix(RedisServerName(), "-server") + "-cli")
}

// RedisServerName is the server binary's name: EnvRedisServer, or
// redis-server.
func RedisServerName() string {
	if name := os.Getenv(EnvRedisServer); name != "" {
		return name
	}
	return "redis-server"
}

func redisBinary(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", errors.New(name + " not found on PATH; " + InstallHint)
	}
	return path, nil
}
