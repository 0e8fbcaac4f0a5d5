package tomldoc

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a file, at a line of it.
type Problem struct {
	File string // the file's path, as given to Parse
	Line int    // 1-based; zero when the problem belongs to no single line
	Msg  string // what is wrong and, when known, how to fix it
}

// Error formats the problem as "file:line: message", or "file: message"
// when it has no line.
func (p *Problem) Error() string {
	if p.Line == 0 {
		return p.File + ": " + p.Msg
	}
	return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
}

// Errors is every problem found in one pass, in line order. The parsers
// of rules.toml return it as their error; errors.As finds it, and each
// element is a *Problem.
type Errors []error

// Error joins the problems, one per line.
func (e Errors) Error() string {
	var b strings.Builder
	for i, err := range e {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap returns the problems, so that errors.Is and errors.As look at each.
func (e Errors) Unwrap() []error { return e }
