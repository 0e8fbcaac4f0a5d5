// Package migrations holds the example that the README, the demo,
// docker-compose and the tests share: the schema (products and categories,
// in the *.sql files, run in file name order) and the rules that go with it
// (rules.toml), built into the binary so that the demo runs from anywhere.
//
// rules.toml here is a copy of the repository's root rules.toml, which the
// README shows and `run` reads by default; a test keeps the two identical.
// (go:embed reaches only files in a package's own directory and below.)
package migrations

import (
	"embed"
	"io/fs"
	"sort"
)

//go:embed *.sql
var files embed.FS

// Rules is the example rules file, the same bytes as the root rules.toml.
//
//go:embed rules.toml
var Rules []byte

// SQL returns the migration files' contents in file name order.
func SQL() ([]string, error) {
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		b, err := files.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return out, nil
}
