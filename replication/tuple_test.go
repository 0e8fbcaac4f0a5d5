package replication

import (
	"encoding/binary"
	"fmt"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// tuple builds TupleData from column specs: nil is 'n', "\x00u" is 'u',
// anything else is a 't' value.
func tuple(cols ...any) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		switch c := c.(type) {
		case nil:
			b = append(b, 'n')
		case byte:
			b = append(b, c) // a bare kind byte, e.g. 'u'
		case string:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(c)))
			b = append(b, c...)
		}
	}
	return b
}

func rowMsg(kind byte, rel uint32, parts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{kind}, rel)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func show(r pginvalidator.Row) string {
	if r == nil {
		return "-"
	}
	s := ""
	for _, v := range r {
		switch v.Kind {
		case pginvalidator.ValueNull:
			s += "[null]"
		case pginvalidator.ValueUnchanged:
			s += "[unchanged]"
		default:
			s += "[" + string(v.Data) + "]"
		}
	}
	return s
}

func TestDecodeRow(t *testing.T) {
	tests := []struct {
		name     string
		msg      []byte
		op       pginvalidator.Op
		old, new string
		keyOnly  bool
	}{
		{"insert", rowMsg('I', 7, []byte{'N'}, tuple("1", nil, "x")), pginvalidator.OpInsert, "-", "[1][null][x]", false},
		{"update without old row", rowMsg('U', 7, []byte{'N'}, tuple("1", "b")), pginvalidator.OpUpdate, "-", "[1][b]", false},
		{"update with full old row", rowMsg('U', 7, []byte{'O'}, tuple("1", "a"), []byte{'N'}, tuple("1", "b")), pginvalidator.OpUpdate, "[1][a]", "[1][b]", false},
		{"update with key", rowMsg('U', 7, []byte{'K'}, tuple("1", nil), []byte{'N'}, tuple("2", "b")), pginvalidator.OpUpdate, "[1][null]", "[2][b]", true},
		{"unchanged toast", rowMsg('U', 7, []byte{'O'}, tuple("1", "big"), []byte{'N'}, tuple("1", byte('u'))), pginvalidator.OpUpdate, "[1][big]", "[1][unchanged]", false},
		{"delete by key", rowMsg('D', 7, []byte{'K'}, tuple("1", nil)), pginvalidator.OpDelete, "[1][null]", "-", true},
		{"delete full", rowMsg('D', 7, []byte{'O'}, tuple("1", "a")), pginvalidator.OpDelete, "[1][a]", "-", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeRow(tt.msg, &arena{})
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%v %d %s %s %v", m.op, m.relationID, show(m.old), show(m.new), m.oldKeyOnly)
			want := fmt.Sprintf("%v %d %s %s %v", tt.op, 7, tt.old, tt.new, tt.keyOnly)
			if got != want {
				t.Errorf("got %s, want %s", got, want)
			}
		})
	}
}

// Every prefix of a valid message is an error, never a panic.
func TestDecodeRowShortInput(t *testing.T) {
	full := rowMsg('U', 7, []byte{'O'}, tuple("1", "a", nil), []byte{'N'}, tuple("1", "b", byte('u')))
	for n := 0; n < len(full); n++ {
		if _, err := decodeRow(full[:n], &arena{}); err == nil {
			t.Errorf("decodeRow of the first %d bytes succeeded", n)
		}
	}
}

func FuzzDecodeRow(f *testing.F) {
	f.Add(rowMsg('I', 1, []byte{'N'}, tuple("1", nil)))
	f.Add(rowMsg('U', 1, []byte{'K'}, tuple("1"), []byte{'N'}, tuple("2")))
	f.Add(rowMsg('D', 1, []byte{'O'}, tuple("1", byte('u'))))
	f.Fuzz(func(t *testing.T, msg []byte) {
		decodeRow(msg, &arena{}) // must not panic
	})
}

func TestArenaRowsDoNotOverlap(t *testing.T) {
	var a arena
	var rows []pginvalidator.Row
	for i := 0; i < 3000; i++ {
		r := a.row(3)
		r[0] = pginvalidator.Value{Kind: pginvalidator.ValueText, Data: a.copyBytes([]byte(fmt.Sprint(i)))}
		rows = append(rows, r)
	}
	for i, r := range rows {
		if got := string(r[0].Data); got != fmt.Sprint(i) {
			t.Fatalf("row %d holds %q", i, got)
		}
	}
}
