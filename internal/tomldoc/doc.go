// Package tomldoc decodes a TOML document into plain Go values and knows the
// line of every key and array element in it, so that the code that checks
// the values can report each problem as "file:line: message". It holds the
// helpers that both readers of rules.toml use: mapping for the [[rule]]
// tables, config for the rest of the file.
//
// Values are what go-toml gives for map[string]any: string, int64, float64,
// bool, a date or time, []any (arrays and arrays of tables alike) and
// map[string]any.
package tomldoc

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Doc is a decoded TOML document and the lines of its keys.
type Doc struct {
	File  string         // the path the document was read from, for messages
	Root  map[string]any // the top-level keys
	lines *lineIndex
}

// Parse decodes data, the content of the file named file. A TOML syntax
// error is returned as Errors holding one *Problem at its line, which says
// at which column and, when it is inside a key/value, after which key.
func Parse(file string, data []byte) (*Doc, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a byte order mark, as editors on Windows write
	lines, err := indexLines(file, data)
	if err != nil {
		return nil, Errors{err}
	}
	var root map[string]any
	if err := toml.Unmarshal(data, &root); err != nil {
		// The syntax is right (indexLines parsed it): a key defined twice,
		// a date that does not exist, an integer out of range.
		var de *toml.DecodeError
		if !errors.As(err, &de) {
			return nil, Errors{&Problem{File: file, Msg: "TOML syntax error: " + err.Error()}}
		}
		line, col := de.Position()
		msg := "TOML syntax error: "
		if key := lines.keyAt(line); key != "" {
			msg = fmt.Sprintf("TOML syntax error after key %q: ", key)
		}
		msg += fmt.Sprintf("%s (column %d)", strings.TrimPrefix(de.Error(), "toml: "), col)
		return nil, Errors{&Problem{File: file, Line: line, Msg: msg}}
	}
	return &Doc{File: file, Root: root, lines: lines}, nil
}

// Line returns the line of the key or array element at path, or of its
// nearest ancestor the document has, or zero.
//
// A path is the chain of keys from the top, with an array index for every
// element of an array or array of tables: the second template of the first
// rule's del is ["rule", "0", "del", "1"].
func (d *Doc) Line(path ...string) int { return d.lines.line(path...) }

// Checker collects the problems found in one Doc, each at its line.
type Checker struct {
	Doc      *Doc
	problems Errors
}

// NewChecker returns a Checker for d with no problems yet.
func NewChecker(d *Doc) *Checker { return &Checker{Doc: d} }

// Err returns the problems found so far, sorted by line, as Errors, or nil.
func (c *Checker) Err() error {
	if len(c.problems) == 0 {
		return nil
	}
	slices.SortStableFunc(c.problems, func(a, b error) int { return a.(*Problem).Line - b.(*Problem).Line })
	return c.problems
}

// Addf reports a problem at the line of path.
func (c *Checker) Addf(path []string, format string, args ...any) {
	c.problems = append(c.problems, &Problem{File: c.Doc.File, Line: c.Doc.Line(path...), Msg: fmt.Sprintf(format, args...)})
}

// Unknown reports the key at path as not one of allowed in table.
func (c *Checker) Unknown(path []string, table string, allowed []string) {
	c.Addf(path, "unknown key %q in %s; allowed keys: %s", path[len(path)-1], table, strings.Join(allowed, ", "))
}

// Table returns v as a table, or reports it and returns nil.
func (c *Checker) Table(path []string, v any) map[string]any {
	m, ok := v.(map[string]any)
	if !ok {
		c.Addf(path, "%s must be a table: write [%s] on a line of its own, with its keys below", path[0], path[0])
	}
	return m
}

// Tables returns v, the value of the top-level key name, as an array of
// tables, written either under [[name]] headers or as an array of inline
// tables. An element that is not a table is reported and left nil; a value
// that is not an array is reported, and Tables returns false.
func (c *Checker) Tables(name string, v any) ([]map[string]any, bool) {
	switch v := v.(type) {
	case []any: // [[name]] headers, or name = [{...}, {...}]
		tables := make([]map[string]any, 0, len(v))
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				c.WrongType([]string{name, strconv.Itoa(i)}, "a table", e)
			}
			tables = append(tables, m)
		}
		return tables, true
	}
	c.Addf([]string{name}, "%s must be an array of tables: write each %s under its own [[%s]] header, with double brackets", name, name, name)
	return nil, false
}

// Str stores v in dst if it is a string, and reports it otherwise.
func (c *Checker) Str(path []string, v any, dst *string) bool {
	s, ok := v.(string)
	if !ok {
		c.WrongType(path, "a string, in double quotes", v)
		return false
	}
	*dst = s
	return true
}

// Strs returns v as a []string if it is an array of strings, and reports
// every element that is not.
func (c *Checker) Strs(path []string, v any) ([]string, bool) {
	arr, ok := v.([]any)
	if !ok {
		c.WrongType(path, `an array of strings, like ["a", "b"]`, v)
		return nil, false
	}
	strs := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			c.WrongType(Key(path, strconv.Itoa(i)), "a string, in double quotes", e)
			continue
		}
		strs = append(strs, s)
	}
	return strs, len(strs) == len(arr)
}

// WrongType reports that the value v at path is not what it must be.
func (c *Checker) WrongType(path []string, want string, v any) {
	c.Addf(path, "%s must be %s; got %s", keyName(path), want, typeName(v))
}

// Key returns path extended by k, never sharing path's array.
func Key(path []string, k ...string) []string {
	return append(path[:len(path):len(path)], k...)
}

// SortedKeys returns the keys of m in order, so that checks run, and report,
// in the same order every time.
func SortedKeys(m map[string]any) []string { return slices.Sorted(maps.Keys(m)) }

// keyName names the key at path for a message: "postgres.slot", "del",
// "del[1]". Inside an element of an array of tables, the element's own keys
// are named alone.
func keyName(path []string) string {
	if len(path) > 2 {
		if _, err := strconv.Atoi(path[1]); err == nil {
			path = path[2:]
		}
	}
	var b strings.Builder
	for i, k := range path {
		if _, err := strconv.Atoi(k); err == nil && i > 0 {
			fmt.Fprintf(&b, "[%s]", k)
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(k)
	}
	return b.String()
}

func typeName(v any) string {
	switch v := v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		if isTables(v) {
			return "an array of tables"
		}
		return "an array"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}

// isTables reports whether a is a non-empty array whose elements are all
// tables: [[name]] headers, or an array of inline tables.
func isTables(a []any) bool {
	for _, e := range a {
		if _, ok := e.(map[string]any); !ok {
			return false
		}
	}
	return len(a) > 0
}
