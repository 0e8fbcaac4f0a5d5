package tomldoc

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// lineIndex maps each key and array element of a TOML document to the line
// it starts on. The decoder does not say where values are, so the index is
// built from the same library's syntax tree, which gives every key and
// scalar its byte range.
type lineIndex struct {
	starts []int          // byte offset of the start of each line
	lines  map[string]int // joined path -> 1-based line
	tables map[string]int // joined path of an array of tables -> elements so far
	keys   []keySpan      // every top-level key/value, in order
}

// keySpan is the lines a top-level key/value spans, and its dotted key as
// TOML writes it, the table's name included: "rule.del".
type keySpan struct {
	first, last int
	key         string
}

// keyAt returns the dotted key of the key/value on line, or "".
func (x *lineIndex) keyAt(line int) string {
	for _, k := range x.keys {
		if k.first <= line && line <= k.last {
			return k.key
		}
	}
	return ""
}

// line returns the line of path, or of its nearest ancestor the index
// knows, or zero.
func (x *lineIndex) line(path ...string) int {
	for n := len(path); n > 0; n-- {
		if l, ok := x.lines[joinPath(path[:n])]; ok {
			return l
		}
	}
	return 0
}

func joinPath(path []string) string { return strings.Join(path, "\x00") }

// lineOf returns the 1-based line of byte offset off.
func (x *lineIndex) lineOf(off int) int { return sort.SearchInts(x.starts, off+1) }

// record notes that path starts at byte offset off, unless it was seen
// before: a table defined in parts is where it first appears.
func (x *lineIndex) record(path []string, off int) {
	k := joinPath(path)
	if _, ok := x.lines[k]; !ok {
		x.lines[k] = x.lineOf(off)
	}
}

// indexLines parses data with go-toml's parser and indexes its keys. Its
// error is a *Problem for the first syntax error.
func indexLines(file string, data []byte) (*lineIndex, error) {
	x := &lineIndex{starts: []int{0}, lines: make(map[string]int), tables: make(map[string]int)}
	for i, c := range data {
		if c == '\n' {
			x.starts = append(x.starts, i+1)
		}
	}
	var p unstable.Parser
	p.Reset(data)
	var context []string // the path the keys below the last header extend
	var lastHeader []string
	end := 0 // offset just past the last byte of the last complete expression
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			context, lastHeader = x.header(&p, e), keyParts(e.Key())
		case unstable.KeyValue:
			x.keyValue(&p, context, e)
			x.keys = append(x.keys, keySpan{
				first: x.lineOf(int(e.Raw.Offset)),
				last:  x.lineOf(int(e.Raw.Offset+e.Raw.Length) - 1),
				key:   strings.Join(append(append([]string(nil), lastHeader...), keyParts(e.Key())...), "."),
			})
		}
		end = max(end, lastByte(&p, e))
	}
	err := p.Error()
	if err == nil {
		return x, nil
	}
	var pe *unstable.ParserError
	if !errors.As(err, &pe) {
		return nil, &Problem{File: file, Msg: "TOML syntax error: " + err.Error()}
	}
	off := p.Range(pe.Highlight).Offset
	line := x.lineOf(int(off))
	col := int(off) - x.starts[line-1] + 1
	msg := "TOML syntax error: "
	if key := failingKey(data, end); key != nil {
		msg = fmt.Sprintf("TOML syntax error after key %q: ", strings.Join(append(lastHeader, key...), "."))
	}
	return nil, &Problem{File: file, Line: line, Msg: fmt.Sprintf("%s%s (column %d)", msg, pe.Message, col)}
}

// header records a [table] or [[array.of.tables]] header and returns the
// path that the keys below it extend.
func (x *lineIndex) header(p *unstable.Parser, e *unstable.Node) []string {
	var path []string
	for it := e.Key(); it.Next(); {
		k := it.Node()
		path = append(path, string(k.Data))
		off := int(k.Raw.Offset)
		x.record(path, off) // [a.b] defines a as well
		n, isArray := x.tables[joinPath(path)]
		if it.IsLast() && e.Kind == unstable.ArrayTable {
			x.tables[joinPath(path)] = n + 1
			path = append(path, strconv.Itoa(n))
			x.record(path, off)
		} else if isArray {
			path = append(path, strconv.Itoa(n-1))
		}
	}
	return path
}

// keyValue records the key of e, a key/value, under context, and the array
// elements and inline table keys of its value.
func (x *lineIndex) keyValue(p *unstable.Parser, context []string, e *unstable.Node) {
	path := append([]string(nil), context...)
	for it := e.Key(); it.Next(); {
		k := it.Node()
		path = append(path, string(k.Data))
		x.record(path, int(k.Raw.Offset)) // a.b = 1 defines a as well
	}
	x.value(p, path, e.Value())
}

// value records the array elements and inline table keys of v under path.
func (x *lineIndex) value(p *unstable.Parser, path []string, v *unstable.Node) {
	switch v.Kind {
	case unstable.Array:
		i := 0
		for it := v.Children(); it.Next(); {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			elem := append(append([]string(nil), path...), strconv.Itoa(i))
			if off, ok := firstByte(c); ok {
				x.record(elem, off)
			}
			x.value(p, elem, c)
			i++
		}
	case unstable.InlineTable:
		for it := v.Children(); it.Next(); {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				x.keyValue(p, path, c)
			}
		}
	}
}

// firstByte returns the offset where node n starts in the document: its own
// range, or else its first child's. An empty array has neither.
func firstByte(n *unstable.Node) (int, bool) {
	if n.Raw.Length > 0 || n.Kind == unstable.String {
		return int(n.Raw.Offset), true
	}
	for it := n.Children(); it.Next(); {
		if off, ok := firstByte(it.Node()); ok {
			return off, true
		}
	}
	return 0, false
}

// lastByte returns the offset just past the last byte of expression e that
// the tree knows.
func lastByte(p *unstable.Parser, e *unstable.Node) int {
	end := int(e.Raw.Offset + e.Raw.Length)
	for it := e.Children(); it.Next(); {
		end = max(end, lastByte(p, it.Node()))
	}
	return end
}

// keyParts returns the parts of a dotted key.
func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

// failingKey returns the key of the key/value that begins after byte offset
// end, the end of the last expression the parser completed, or nil when what
// follows is a header or does not start with a valid key.
func failingKey(data []byte, end int) []string {
	rest := data[end:]
	if i := bytes.IndexByte(rest, '\n'); i >= 0 && end > 0 {
		rest = rest[i+1:] // the rest of the last expression's line
	}
	for { // blank and comment lines
		rest = bytes.TrimLeft(rest, " \t\r\n")
		if len(rest) == 0 || rest[0] != '#' {
			break
		}
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[i:]
		} else {
			rest = nil
		}
	}
	if len(rest) == 0 || rest[0] == '[' {
		return nil
	}
	if i := bytes.IndexByte(rest, '\n'); i >= 0 {
		rest = rest[:i]
	}
	// Parse "key = 0" alone: the key is what the failing expression began with.
	eq := bytes.IndexByte(rest, '=')
	for eq >= 0 {
		var p unstable.Parser
		p.Reset(append(append([]byte(nil), rest[:eq]...), "= 0"...))
		if p.NextExpression() {
			return keyParts(p.Expression().Key())
		}
		next := bytes.IndexByte(rest[eq+1:], '=') // an "=" inside a quoted key
		if next < 0 {
			break
		}
		eq += next + 1
	}
	return nil
}
