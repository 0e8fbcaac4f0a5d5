package daemon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// DefaultDecodingWorkMem is the walsender's logical_decoding_work_mem the
// daemon asks for (Config.DecodingWorkMem): a transaction that outgrows it
// is streamed while it runs, and at most that much of it is left to decode
// and send after its COMMIT. Measured with the bench's bulk scenario (one
// UPDATE of 1,000,000 rows, a key per row, the daemon live) on a 2-core AMD
// EPYC VM, 2026-12-07, four runs each: COMMIT to the last key gone took
// 1.68-2.11 s with 4MB and 1.91-2.30 s with 16MB; 64MB, PostgreSQL's
// default, 2.33 s in one run. A transaction of more than about 25,000
// rows of three columns is streamed with 4MB.
const DefaultDecodingWorkMem = "4MB"

// streamMemory bounds the memory the commands of one streamed transaction
// hold before its Del commands go to a temporary file: a 1,000,000-row
// UPDATE with a key per row renders a million Del commands, about 90 MB in
// a map, and the daemon's memory must stay bounded however large a
// transaction is. 4 MB is about 36,000 keys of 20 bytes; a rule that maps
// every row to one of fewer keys than that never spills, and applies each
// once. With 32 MB the bench's bulk scenario peaked at 112-126 MB of RSS,
// with 4 MB at 41 MB (AMD host, 2026-12-07).
const streamMemory = 4 << 20

// streamedBatch is how many commands of a streamed transaction the sink
// takes before it flushes, at its commit: a million keys go in 62 round
// trips of 16 Ki keys, 164 UNLINKs each, not in 245 of MaxBatch. With 64 Ki
// the bulk scenario was no faster (1.7-2.1 s against 1.6-1.9 s, COMMIT to
// the last key gone, on the AMD host) and peaked at 54 MB against 41 MB.
const streamedBatch = 16 << 10

// commandOverhead is what one command costs in the in-memory set beside
// its key's bytes: the Command twice (its Action, the key's string header,
// its Redelete; once in the map, once in the order slice) and the map's
// share of a bucket, rounded up.
const commandOverhead = 96

// streamedTx holds what a transaction that PostgreSQL streams while it
// runs (replication.StreamStart) will need at its commit: the commands its
// rows render, each once, and the canaries it carries. Its StreamCommit
// hands them to the sink, in commit order with the other transactions;
// its StreamAbort drops them. It lives in a turn of the consumer, under its
// lock.
//
// The commands are kept in memory up to streamMemory bytes. Past that, the
// Del commands, nearly all of a bulk write's, go to a temporary file that
// replay reads back; the others (Incr and Version keys, which must change
// once per transaction, and patterns) stay in memory, where they are few.
// A Del key may then be written twice: it is deleted twice, which is
// harmless.
//
// The commands go to Redis in the order their rows came, as the commands of
// a transaction sent whole do (invalidator.Batch keeps the order too): a
// table's rows come mostly in the order they were written, so their keys
// were most likely cached in that order, and Redis frees keys in the order
// it allocated them twice as fast as in a random one (BenchmarkApplyDel1M,
// redis-cli-100 against redis-cli-100-shuffled). Replayed in the set's
// random order, the bulk scenario's commit took 1.6× Redis's own delete
// time.
type streamedTx struct {
	xid       uint32
	cmds      map[pginvalidator.Command]struct{} // deduplicated, in memory
	order     []pginvalidator.Command            // cmds, in the order first seen
	size      int                                // bytes cmds holds, about
	limit     int                                // Config.StreamMemory
	spill     *spillFile                         // Del commands past limit; nil: none
	rels      []*pginvalidator.Relation          // the relations of its row changes, each once
	canaries  []string                           // canary tokens it carries
	rows      int                                // row changes streamed
	firstSeen time.Time                          // when its first block began
}

func newStreamedTx(xid uint32, limit int, now time.Time) *streamedTx {
	return &streamedTx{xid: xid, cmds: make(map[pginvalidator.Command]struct{}), limit: limit, firstSeen: now}
}

// change notes a row change of relation rel, whose rules rendered cmds.
func (t *streamedTx) change(rel *pginvalidator.Relation, cmds []pginvalidator.Command) error {
	t.rows++
	if n := len(t.rels); n == 0 || t.rels[n-1] != rel {
		seen := false
		for _, r := range t.rels {
			seen = seen || r == rel
		}
		if !seen {
			t.rels = append(t.rels, rel)
		}
	}
	return t.add(cmds)
}

// add keeps cmds, each once, and spills the Del commands to the file once
// the set outgrows the limit.
func (t *streamedTx) add(cmds []pginvalidator.Command) error {
	for _, c := range cmds {
		if _, ok := t.cmds[c]; ok {
			continue
		}
		t.cmds[c] = struct{}{}
		t.order = append(t.order, c)
		t.size += len(c.Key) + commandOverhead
	}
	if t.size > t.limit {
		return t.spillDels()
	}
	return nil
}

// spillDels moves the Del commands of the set to the spill file.
func (t *streamedTx) spillDels() error {
	if t.spill == nil {
		f, err := newSpillFile()
		if err != nil {
			return fmt.Errorf("spill the keys of streamed transaction %d: %w", t.xid, err)
		}
		t.spill = f
	}
	t.size = 0
	kept := t.order[:0]
	for _, c := range t.order {
		if c.Action != pginvalidator.Del {
			kept = append(kept, c)
			t.size += len(c.Key) + commandOverhead
			continue
		}
		if err := t.spill.write(c); err != nil {
			return fmt.Errorf("spill the keys of streamed transaction %d: %w", t.xid, err)
		}
		delete(t.cmds, c)
	}
	clear(t.order[len(kept):]) // let the spilled keys' strings go
	t.order = kept
	return nil
}

// replay hands every command kept to fn, in slices of at most n, which fn
// must not keep: first the spilled ones, then those in memory, each in the
// order first seen.
func (t *streamedTx) replay(n int, fn func([]pginvalidator.Command) error) error {
	buf := make([]pginvalidator.Command, 0, min(n, len(t.order)+1))
	emit := func(c pginvalidator.Command) error {
		buf = append(buf, c)
		if len(buf) < n {
			return nil
		}
		err := fn(buf)
		buf = buf[:0]
		return err
	}
	if t.spill != nil {
		if err := t.spill.read(emit); err != nil {
			return err
		}
	}
	for _, c := range t.order {
		if err := emit(c); err != nil {
			return err
		}
	}
	if len(buf) > 0 {
		return fn(buf)
	}
	return nil
}

// spilled returns how many bytes went to the spill file.
func (t *streamedTx) spilled() int64 {
	if t.spill == nil {
		return 0
	}
	return t.spill.bytes
}

// close drops what t holds, and its file.
func (t *streamedTx) close() {
	if t.spill != nil {
		t.spill.close()
		t.spill = nil
	}
	clear(t.cmds)
	t.order = nil
}

// spillFile is a temporary file of commands, written one after the other
// and read back once. On Linux it is unlinked as soon as it is created, so
// that nothing is left behind by a crash.
type spillFile struct {
	f     *os.File
	w     *bufio.Writer
	path  string // removed at close, where the system could not unlink it open
	bytes int64  // written so far
	tmp   [2*binary.MaxVarintLen64 + 1]byte
}

// newSpillFile creates the file in the system's temporary directory
// ($TMPDIR, else /tmp).
func newSpillFile() (*spillFile, error) {
	f, err := os.CreateTemp("", "pg-invalidator-streamed-*")
	if err != nil {
		return nil, err
	}
	s := &spillFile{f: f, w: bufio.NewWriterSize(f, 256<<10), path: f.Name()}
	if os.Remove(f.Name()) == nil {
		s.path = ""
	}
	return s, nil
}

// write appends c: its action, its Redelete in nanoseconds and its key's
// length as varints, then the key.
func (s *spillFile) write(c pginvalidator.Command) error {
	b := s.tmp[:0]
	b = append(b, byte(c.Action))
	b = binary.AppendUvarint(b, uint64(c.Redelete))
	b = binary.AppendUvarint(b, uint64(len(c.Key)))
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	_, err := s.w.WriteString(c.Key)
	s.bytes += int64(len(b) + len(c.Key))
	return err
}

// read hands every command written to fn, in order.
func (s *spillFile) read(fn func(pginvalidator.Command) error) error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("read back spilled keys: %w", err)
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read back spilled keys: %w", err)
	}
	r := bufio.NewReaderSize(s.f, 256<<10)
	var key []byte
	for {
		action, err := r.ReadByte()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read back spilled keys: %w", err)
		}
		redelete, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("read back spilled keys: %w", err)
		}
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("read back spilled keys: %w", err)
		}
		if uint64(cap(key)) < n {
			key = make([]byte, n)
		}
		key = key[:n]
		if _, err := io.ReadFull(r, key); err != nil {
			return fmt.Errorf("read back spilled keys: %w", err)
		}
		c := pginvalidator.Command{Action: pginvalidator.Action(action), Key: string(key), Redelete: time.Duration(redelete)}
		if err := fn(c); err != nil {
			return err
		}
	}
	// Appending again after a read is not needed: a file is read once, at
	// its transaction's commit.
	return nil
}

// close closes the file, and removes it where it was not unlinked.
func (s *spillFile) close() {
	s.f.Close()
	if s.path != "" {
		os.Remove(s.path)
	}
}
