package tomldoc

import (
	"sort"
	"strconv"
	"strings"
)

// lineIndex maps each key and array element of a TOML document to the line it
// starts on. The toml package does not say where keys are inside arrays of
// tables, so this skims the source a second time. It runs only on documents
// the toml package has already accepted, so it does not check syntax; it only
// has to agree with the toml package about which key is which.
//
// A path is the chain of keys from the top, with an array index for every
// element of an array or array of tables: the second template of the first
// rule's del is ["rule", "0", "del", "1"].
type lineIndex struct {
	src    string
	pos    int
	starts []int          // byte offset of the start of each line
	lines  map[string]int // joined path -> 1-based line
	tables map[string]int // joined path of an array of tables -> elements so far
}

func indexLines(src string) *lineIndex {
	x := &lineIndex{
		src:    src,
		starts: []int{0},
		lines:  make(map[string]int),
		tables: make(map[string]int),
	}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			x.starts = append(x.starts, i+1)
		}
	}
	// Pass a byte order mark, as the toml package does.
	if strings.HasPrefix(src, "\xef\xbb\xbf") {
		x.pos = 3
	} else if strings.HasPrefix(src, "\xff\xfe") || strings.HasPrefix(src, "\xfe\xff") {
		x.pos = 2
	}
	x.document()
	return x
}

// line returns the line of path, or of its nearest ancestor the index knows,
// or zero.
func (x *lineIndex) line(path ...string) int {
	for n := len(path); n > 0; n-- {
		if l, ok := x.lines[joinPath(path[:n])]; ok {
			return l
		}
	}
	return 0
}

func joinPath(path []string) string { return strings.Join(path, "\x00") }

func (x *lineIndex) record(path []string) {
	k := joinPath(path)
	if _, ok := x.lines[k]; !ok {
		x.lines[k] = sort.SearchInts(x.starts, x.pos+1)
	}
}

func (x *lineIndex) eof() bool { return x.pos >= len(x.src) }

func (x *lineIndex) peek() byte {
	if x.eof() {
		return 0
	}
	return x.src[x.pos]
}

func (x *lineIndex) has(prefix string) bool { return strings.HasPrefix(x.src[x.pos:], prefix) }

// skip passes spaces and tabs, and with newlines also line ends and comments.
func (x *lineIndex) skip(newlines bool) {
	for !x.eof() {
		switch c := x.src[x.pos]; {
		case c == ' ' || c == '\t':
			x.pos++
		case newlines && (c == '\n' || c == '\r'):
			x.pos++
		case newlines && c == '#':
			x.toLineEnd()
		default:
			return
		}
	}
}

func (x *lineIndex) toLineEnd() {
	if i := strings.IndexByte(x.src[x.pos:], '\n'); i >= 0 {
		x.pos += i
	} else {
		x.pos = len(x.src)
	}
}

func (x *lineIndex) document() {
	var context []string
	for {
		x.skip(true)
		if x.eof() {
			return
		}
		start := x.pos
		if x.peek() == '[' {
			context = x.header()
		} else {
			x.keyValue(context)
		}
		x.skip(false)
		if x.peek() == '#' {
			x.toLineEnd()
		}
		if x.pos == start { // not TOML after all; never loop forever
			x.pos++
		}
	}
}

// header reads [table] or [[array.of.tables]] and returns the path that the
// keys below it extend.
func (x *lineIndex) header() []string {
	double := x.has("[[")
	x.pos++
	if double {
		x.pos++
	}
	key := x.key()
	x.skip(false)
	x.pos++ // ']'
	if double {
		x.pos++
	}
	var path []string
	for i, k := range key {
		path = append(path, k)
		x.record(path) // [a.b] defines a as well
		n, isArray := x.tables[joinPath(path)]
		if i == len(key)-1 && double {
			x.tables[joinPath(path)] = n + 1
			path = append(path, strconv.Itoa(n))
		} else if isArray {
			path = append(path, strconv.Itoa(n-1))
		}
	}
	x.record(path) // a header is one line, so x.pos is still on it
	return path
}

func (x *lineIndex) keyValue(context []string) {
	path := append([]string(nil), context...)
	for _, k := range x.key() {
		path = append(path, k)
		x.record(path) // a.b = 1 defines a as well
	}
	x.skip(false)
	if x.peek() == '=' {
		x.pos++
	}
	x.skip(false)
	x.value(path)
}

// key reads a dotted key: bare, "basic" or 'literal' parts.
func (x *lineIndex) key() []string {
	var parts []string
	for {
		x.skip(false)
		switch x.peek() {
		case '"':
			parts = append(parts, unescape(x.basicString()))
		case '\'':
			parts = append(parts, strings.Trim(x.literalString(), "'"))
		default:
			start := x.pos
			for !x.eof() && isBareKeyByte(x.peek()) {
				x.pos++
			}
			parts = append(parts, x.src[start:x.pos])
		}
		x.skip(false)
		if x.peek() != '.' {
			return parts
		}
		x.pos++
	}
}

// unescape returns the value of a "basic" TOML string given its source.
// The toml package has checked the escapes.
func unescape(src string) string {
	src = strings.TrimSuffix(strings.TrimPrefix(src, `"`), `"`)
	var b strings.Builder
	for i := 0; i < len(src); i++ {
		if src[i] != '\\' || i+1 == len(src) {
			b.WriteByte(src[i])
			continue
		}
		i++
		digits := 0
		switch src[i] {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte('\x1b')
		case 'x':
			digits = 2
		case 'u':
			digits = 4
		case 'U':
			digits = 8
		default: // \" and \\
			b.WriteByte(src[i])
		}
		if digits > 0 && i+digits < len(src) {
			r, _ := strconv.ParseUint(src[i+1:i+1+digits], 16, 32)
			b.WriteRune(rune(r))
			i += digits
		}
	}
	return b.String()
}

func isBareKeyByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// value skims one value, recording the lines of array elements and inline
// table keys under path.
func (x *lineIndex) value(path []string) {
	switch {
	case x.has(`"""`):
		x.multiline(`"""`, true)
	case x.has(`'''`):
		x.multiline(`'''`, false)
	case x.peek() == '"':
		x.basicString()
	case x.peek() == '\'':
		x.literalString()
	case x.peek() == '[':
		x.pos++
		for i := 0; ; i++ {
			x.skip(true)
			if x.eof() || x.peek() == ']' {
				x.pos++
				return
			}
			start := x.pos
			elem := append(append([]string(nil), path...), strconv.Itoa(i))
			x.record(elem)
			x.value(elem)
			x.skip(true)
			if x.peek() == ',' {
				x.pos++
			}
			if x.pos == start {
				x.pos++
			}
		}
	case x.peek() == '{':
		x.pos++
		for {
			x.skip(true)
			if x.eof() || x.peek() == '}' {
				x.pos++
				return
			}
			start := x.pos
			x.keyValue(path)
			x.skip(true)
			if x.peek() == ',' {
				x.pos++
			}
			if x.pos == start {
				x.pos++
			}
		}
	default: // number, boolean or date-time
		for !x.eof() && !strings.ContainsRune(",]}#\r\n", rune(x.peek())) {
			x.pos++
		}
	}
}

// basicString reads a one-line "string" and returns its source text.
func (x *lineIndex) basicString() string {
	start := x.pos
	for x.pos++; !x.eof(); x.pos++ {
		switch x.src[x.pos] {
		case '\\':
			x.pos++
		case '"', '\n':
			x.pos++
			return x.src[start:min(x.pos, len(x.src))]
		}
	}
	return x.src[start:]
}

// literalString reads a one-line 'string' and returns its source text.
func (x *lineIndex) literalString() string {
	start := x.pos
	x.pos++
	if i := strings.IndexAny(x.src[x.pos:], "'\n"); i >= 0 {
		x.pos += i + 1
	} else {
		x.pos = len(x.src)
	}
	return x.src[start:x.pos]
}

// multiline reads a multi-line string, whose delimiter is three double or
// three single quotes. Up to two quotes may sit just before the closing
// delimiter.
func (x *lineIndex) multiline(delim string, escapes bool) {
	for x.pos += 3; !x.eof(); x.pos++ {
		if escapes && x.src[x.pos] == '\\' {
			x.pos++
			continue
		}
		if x.has(delim) {
			x.pos += 3
			for i := 0; i < 2 && x.peek() == delim[0]; i++ {
				x.pos++
			}
			return
		}
	}
}
