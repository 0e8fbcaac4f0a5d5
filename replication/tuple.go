package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// The row messages of pgoutput protocol version 1, which this file decodes
// itself: they are nearly every message of a busy stream, and pglogrepl's
// decoders allocate per column and do no bounds checks.
//
//	Insert: 'I' Int32 relation-id 'N' TupleData
//	Update: 'U' Int32 relation-id ['K' TupleData | 'O' TupleData] 'N' TupleData
//	Delete: 'D' Int32 relation-id ('K' | 'O') TupleData
//	TupleData: Int16 n, then n times: 'n' (NULL) | 'u' (unchanged TOASTed
//	value, not sent) | 't' Int32 len Byte[len] (text) | 'b' Int32 len Byte[len]
//
// 'K' carries the replica identity key columns only, the others as nulls
// that are placeholders; 'O' carries the whole old row (REPLICA IDENTITY FULL).

var errShort = errors.New("message ends early")

// arena holds the bytes and values of the rows the stream decodes, so that
// rows cost an allocation per slab, not several each. It only ever appends
// to a slab, and starts a new one when the last is full: a row taken from
// it never changes, and stays valid for as long as it is referenced, by a
// chunk handed to the consumer or by a key rendered from it.
type arena struct {
	bytes  []byte
	values []pginvalidator.Value
}

const arenaBytes, arenaValues = 64 << 10, 4096

func (a *arena) copyBytes(b []byte) []byte {
	if len(b) > arenaBytes/4 {
		return append([]byte(nil), b...)
	}
	if cap(a.bytes)-len(a.bytes) < len(b) {
		a.bytes = make([]byte, 0, arenaBytes)
	}
	start := len(a.bytes)
	a.bytes = append(a.bytes, b...)
	return a.bytes[start:len(a.bytes):len(a.bytes)]
}

func (a *arena) row(n int) pginvalidator.Row {
	if n > arenaValues/4 {
		return make(pginvalidator.Row, n)
	}
	if cap(a.values)-len(a.values) < n {
		a.values = make([]pginvalidator.Value, 0, arenaValues)
	}
	start := len(a.values)
	a.values = a.values[:start+n]
	return a.values[start : start+n : start+n]
}

// rowMessage is a decoded Insert, Update or Delete.
type rowMessage struct {
	op         pginvalidator.Op
	relationID uint32
	old, new   pginvalidator.Row
	oldKeyOnly bool
}

// decodeRow decodes an Insert, Update or Delete message (msg[0] is its type).
func decodeRow(msg []byte, a *arena) (rowMessage, error) {
	if len(msg) < 1 {
		return rowMessage{}, errShort
	}
	return decodeRowBody(msg[0], msg[1:], a)
}

// decodeRowBody decodes the body of a row message of type typ: what
// follows the type byte, and the xid in a streamed transaction's block.
func decodeRowBody(typ byte, body []byte, a *arena) (rowMessage, error) {
	var m rowMessage
	if len(body) < 5 {
		return m, errShort
	}
	m.relationID = binary.BigEndian.Uint32(body[0:4])
	p := body[4:]
	var err error
	switch typ {
	case 'I':
		m.op = pginvalidator.OpInsert
		if p[0] != 'N' {
			return m, fmt.Errorf("insert: tuple type %q, want 'N'", p[0])
		}
		m.new, _, err = decodeTuple(p[1:], a)
	case 'U':
		m.op = pginvalidator.OpUpdate
		if p[0] == 'K' || p[0] == 'O' {
			m.oldKeyOnly = p[0] == 'K'
			if m.old, p, err = decodeTuple(p[1:], a); err != nil {
				return m, err
			}
			if len(p) == 0 {
				return m, errShort
			}
		}
		if p[0] != 'N' {
			return m, fmt.Errorf("update: tuple type %q, want 'N'", p[0])
		}
		m.new, _, err = decodeTuple(p[1:], a)
	case 'D':
		m.op = pginvalidator.OpDelete
		if p[0] != 'K' && p[0] != 'O' {
			return m, fmt.Errorf("delete: tuple type %q, want 'K' or 'O'", p[0])
		}
		m.oldKeyOnly = p[0] == 'K'
		m.old, _, err = decodeTuple(p[1:], a)
	default:
		return m, fmt.Errorf("message type %q is not a row message", typ)
	}
	return m, err
}

// decodeTuple decodes one TupleData and returns the rest of p.
func decodeTuple(p []byte, a *arena) (pginvalidator.Row, []byte, error) {
	if len(p) < 2 {
		return nil, nil, errShort
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	row := a.row(n)
	for i := 0; i < n; i++ {
		if len(p) < 1 {
			return nil, nil, errShort
		}
		kind := p[0]
		p = p[1:]
		switch kind {
		case 'n':
			row[i] = pginvalidator.Value{Kind: pginvalidator.ValueNull}
		case 'u':
			row[i] = pginvalidator.Value{Kind: pginvalidator.ValueUnchanged}
		case 't', 'b':
			if len(p) < 4 {
				return nil, nil, errShort
			}
			size := int(binary.BigEndian.Uint32(p))
			p = p[4:]
			if size < 0 || len(p) < size {
				return nil, nil, errShort
			}
			row[i] = pginvalidator.Value{Kind: pginvalidator.ValueText, Data: a.copyBytes(p[:size])}
			p = p[size:]
		default:
			return nil, nil, fmt.Errorf("tuple column %d: unknown kind %q", i, kind)
		}
	}
	return row, p, nil
}
