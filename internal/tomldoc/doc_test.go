package tomldoc

import (
	"strings"
	"testing"
)

// TestSyntaxErrors checks that a document TOML rejects is one problem at
// the line where the parser stopped, naming the key being read (with its
// table) and the column.
func TestSyntaxErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{"[[rule]]\ntable = \"a\"\ntable = \"b\"\n",
			`f.toml:3: TOML syntax error after key "rule.table": key table is already defined (column 1)`},
		{"[postgres]\nurl = \"x\"\n[postgres]\nslot = \"y\"\n",
			`f.toml:3: TOML syntax error: table postgres already exists (column 2)`},
		{"[[rule]]\ntable = \"a\n",
			`f.toml:2: TOML syntax error after key "rule.table": basic strings cannot have new lines (column 11)`},
		{"[[rule]]\ntable = a\n",
			`f.toml:2: TOML syntax error after key "rule.table": unexpected character U+0061 'a' at start of value (column 9)`},
		{"[[rule]\ntable = \"a\"\n",
			`f.toml:1: TOML syntax error: expected ']]' to close array table name (column 7)`},
		{"rule = 1\n[[rule]]\n",
			`f.toml:2: TOML syntax error: key rule already exists as a value, but should be an array table (column 3)`},
		{"[[rule]]\ntable = \"x\"\n\n# the keys\ndel = [\n\"a\",\n",
			`f.toml:6: TOML syntax error after key "rule.del": array is incomplete (column 5)`},
		{"[[rule]]\ntable = \"x\" # a comment\ndel = [\"k\"]\non = [\"insert\",, \"update\"]\n",
			`f.toml:4: TOML syntax error after key "rule.on": expected value but got U+002C ',' (column 16)`},
		{"[redis]\n\"wait\".replicas = 99999999999999999999\n",
			`f.toml:2: TOML syntax error after key "redis.wait.replicas": decimal number is too large to fit in a 64-bit signed integer (column 19)`},
		{"[[rule]]\ntable \"x\"\n",
			`f.toml:2: TOML syntax error: expected '=' after key (column 7)`},
		{"a = {x = 1\n",
			`f.toml:1: TOML syntax error after key "a": inline table is incomplete (column 11)`},
	}
	for _, tt := range tests {
		_, err := Parse("f.toml", []byte(tt.src))
		if got := strings.TrimSpace(errString(err)); got != tt.want {
			t.Errorf("Parse(%q):\ngot  %s\nwant %s", tt.src, got, tt.want)
		}
		if errs, ok := err.(Errors); !ok || len(errs) != 1 {
			t.Errorf("Parse(%q) = %T %v, want Errors with one *Problem", tt.src, err, err)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestLines checks the line of keys, header elements and array elements,
// whatever the layout.
func TestLines(t *testing.T) {
	src := "\xef\xbb\xbf# a byte order mark, then [[rule]] in a comment\n" + `[a]
b.c = [1,
  [2, 3], { d = 4,
  e = """
x""" },
]
[[r]]
[[r]]
k = 1
[r.s]
t = 2
[[r.u]]
v = []
`
	d, err := Parse("f.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path []string
		want int
	}{
		{[]string{"a"}, 2},
		{[]string{"a", "b"}, 3},
		{[]string{"a", "b", "c", "0"}, 3},
		{[]string{"a", "b", "c", "1"}, 4},
		{[]string{"a", "b", "c", "1", "1"}, 4},
		{[]string{"a", "b", "c", "2", "d"}, 4},
		{[]string{"a", "b", "c", "2", "e"}, 5},
		{[]string{"a", "b", "c", "9"}, 3}, // no such element: its array's line
		{[]string{"r", "0"}, 8},
		{[]string{"r", "1"}, 9},
		{[]string{"r", "1", "k"}, 10},
		{[]string{"r", "1", "s", "t"}, 12},
		{[]string{"r", "1", "u", "0", "v"}, 14},
		{[]string{"nothing"}, 0},
	}
	for _, tt := range tests {
		if got := d.Line(tt.path...); got != tt.want {
			t.Errorf("Line(%q) = %d, want %d", tt.path, got, tt.want)
		}
	}
}

// FuzzParse checks that Parse never panics, and that every problem is on a
// line of the document.
func FuzzParse(f *testing.F) {
	f.Add([]byte("[[rule]]\ntable = \"t\"\ndel = [\"a\",\n"))
	f.Add([]byte("a.b.\"c\" = { d = [1, [2, {e = 3}]] }\n[[x.y]]\n[x.y.z]\nw = 1979-05-27 07:32:00Z\n"))
	f.Add([]byte("a = '''\nx'''\nb = \"\"\"\n\"\"\" # c\n[t]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := Parse("f.toml", data)
		if err == nil {
			return
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, e := range err.(Errors) {
			if p := e.(*Problem); p.Line < 1 || p.Line > lines {
				t.Fatalf("problem %q is not on one of the %d lines of %q", p, lines, data)
			}
		}
	})
}
