package mapping

import (
	"fmt"
	"slices"
	"strings"
)

// Template is a compiled key template, such as "product-list:category:<category_id>".
// It is immutable once parsed.
type Template struct {
	// Line is the template's line in its rules file; zero for a template made
	// by ParseTemplate.
	Line int

	src  string
	lits []string // the literal text around the placeholders: len(cols)+1 parts
	cols []string // the column each placeholder names, in order
	key  string   // the whole key when there are no placeholders
	glob string   // a Redis glob matching every key the template renders
}

// ParseTemplate compiles a key template. See the package documentation for
// the syntax.
func ParseTemplate(s string) (*Template, error) {
	if s == "" {
		return nil, fmt.Errorf(`empty template; write a key such as "product:<id>"`)
	}
	t := &Template{src: s}
	var lit, glob strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '<' && strings.HasPrefix(s[i:], "<<"), c == '>' && strings.HasPrefix(s[i:], ">>"):
			lit.WriteByte(c)
			writeGlobLiteral(&glob, c)
			i += 2
		case c == '<':
			n := strings.IndexAny(s[i+1:], "<>")
			if n < 0 || s[i+1+n] == '<' {
				return nil, fmt.Errorf(`template %q: the "<" at byte %d has no closing ">"; end the column name with ">", or write "<<" for a literal "<"`, s, i+1)
			}
			name := s[i+1 : i+1+n]
			if name == "" {
				return nil, fmt.Errorf(`template %q: empty placeholder "<>"; put a column name inside, or write "<<>>" for a literal "<>"`, s)
			}
			if strings.TrimSpace(name) != name {
				return nil, fmt.Errorf(`template %q: placeholder "<%s>" has spaces around the column name; write "<%s>"`, s, name, strings.TrimSpace(name))
			}
			t.lits = append(t.lits, lit.String())
			t.cols = append(t.cols, name)
			lit.Reset()
			glob.WriteByte('*')
			i += n + 2
		case c == '>':
			return nil, fmt.Errorf(`template %q: the ">" at byte %d has no opening "<"; write ">>" for a literal ">"`, s, i+1)
		default:
			lit.WriteByte(c)
			writeGlobLiteral(&glob, c)
			i++
		}
	}
	t.lits = append(t.lits, lit.String())
	t.glob = glob.String()
	if len(t.cols) == 0 {
		t.key = t.lits[0]
	}
	return t, nil
}

// writeGlobLiteral writes c so that a Redis glob matches it literally.
func writeGlobLiteral(b *strings.Builder, c byte) {
	if strings.IndexByte(`*?[]\`, c) >= 0 {
		b.WriteByte('\\')
	}
	b.WriteByte(c)
}

// String returns the template's source text.
func (t *Template) String() string { return t.src }

// Columns returns the columns the placeholders name, each once, in order of
// first use. It is empty for a template without placeholders.
func (t *Template) Columns() []string {
	var cols []string
	for _, c := range t.cols {
		if !slices.Contains(cols, c) {
			cols = append(cols, c)
		}
	}
	return cols
}

// Pattern returns a Redis glob pattern that matches every key the template
// can render: each placeholder becomes "*", and glob characters in the
// literal text are escaped with a backslash. For a template without
// placeholders it matches only the one key.
func (t *Template) Pattern() string { return t.glob }
