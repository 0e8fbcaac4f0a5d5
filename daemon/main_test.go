package daemon

import (
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// env is the PostgreSQL and Redis the package's tests share; each test
// makes its own database and key prefix.
var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }
