// Command pg-invalidator keeps Redis caches in step with PostgreSQL: it
// streams logical replication, matches each changed row against the key
// templates in rules.toml, and deletes or increments the derived keys.
//
// Subcommands: run, check, setup, explain, demo, version. Each has --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/pg-invalidator/pg-invalidator/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// buildVersion returns version, or, for a binary built without -ldflags
// (go install ...@v1.2.3), the module version the Go toolchain recorded.
func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

const usage = `pg-invalidator keeps Redis caches in step with PostgreSQL.

Usage:
  pg-invalidator run     [--config rules.toml] [--postgres URL] [--redis URL]   stream and invalidate
  pg-invalidator check   [--config rules.toml] [--postgres URL]                 validate rules and live schema
  pg-invalidator explain --table T --op OP [--old ROW] [--new ROW]              print the commands one change would produce
  pg-invalidator setup   [--config rules.toml] [--postgres URL] [--apply]       print or apply the SQL a DBA runs first
  pg-invalidator demo    [--postgres URL] [--redis URL] [--wait]                try it on a throwaway PostgreSQL and Redis
  pg-invalidator version                                                        print the version

Run "pg-invalidator <command> --help" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Main runs one subcommand and returns the process exit code. It is the
// one place that decides how an error ends the process.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runCommand(ctx, args[1:], stdout, stderr)
	case "check":
		err = checkCommand(ctx, args[1:], stdout, stderr)
	case "explain":
		err = explainCommand(ctx, args[1:], stdout, stderr)
	case "setup":
		err = setupCommand(ctx, args[1:], stdout, stderr)
	case "demo":
		err = demoCommand(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "pg-invalidator %s\n", buildVersion())
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "pg-invalidator: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	var cfgErr *daemon.ConfigError
	if errors.As(err, &cfgErr) {
		fmt.Fprintf(stderr, "pg-invalidator: %d problem(s) found:\n%s\n", len(cfgErr.Problems), cfgErr)
		return 1
	}
	fmt.Fprintf(stderr, "pg-invalidator: %v\n", err)
	return 1
}

// errUsage reports a bad command line; the flag package has already said why.
var errUsage = errors.New("usage")

// parseFlags parses args and turns the flag package's errors into errUsage
// or flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}
