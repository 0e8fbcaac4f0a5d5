package replication

import (
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }
