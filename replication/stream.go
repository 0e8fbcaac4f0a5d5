// Package replication is everything the daemon says to PostgreSQL. It
// speaks the logical replication protocol with the pgoutput plugin
// (proto_version 2 with large transactions streamed while they run on
// PostgreSQL 14 and later, when asked; proto_version 1 otherwise) and
// turns the WAL into pginvalidator.Change values (stream.go, tuple.go); it
// reads the
// catalog (catalog.go, identity.go), keeps the publication (publication.go)
// and the slot (slot.go), checks the server's and the role's prerequisites
// (prerequisites.go, role.go), writes heartbeats (heartbeat.go), prints the
// SQL a DBA runs (statement.go), and says what the server's errors mean
// (errors.go). No SQL is written anywhere else.
//
// The stream guarantees:
//   - it starts at the slot's confirmed_flush_lsn (START_REPLICATION at
//     LSN 0), so nothing acknowledged is replayed and nothing unacknowledged is
//     skipped;
//   - the server is told a position only when the consumer calls Ack, and
//     positions never go backwards;
//   - a status update goes out at least every StatusInterval, and at once when
//     the server asks, even while the consumer is blocked (on Redis, say);
//   - a server that sends nothing is asked for a reply after Timeout/2, and
//     the stream fails with a *SilenceError after Timeout, so a peer gone
//     without closing the connection is never waited for forever;
//   - events reach the consumer in WAL order, in chunks that end where no more
//     data was immediately waiting on the socket, so the consumer can flush
//     exactly when the stream runs dry;
//   - while the stream is live, a chunk may go to the consumer's LiveHandler
//     on the reader's goroutine instead of through the channel, which saves a
//     hand-over between goroutines on the path from COMMIT to Redis.
//
// It knows nothing of rules or Redis.
package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// EventKind says what an Event carries.
type EventKind uint8

// Kinds of Event, in the order a transaction produces them.
const (
	// Begin starts a transaction; XID and LSN (the final LSN) are set.
	Begin EventKind = iota + 1
	// RowChange is one row change (or one truncated relation) inside a transaction.
	RowChange
	// Commit ends a transaction. LSN is its TransactionEndLSN, the position
	// to acknowledge once everything the transaction caused is applied.
	Commit
	// Keepalive is the server's primary keepalive message: it has sent
	// everything up to LSN (its ServerWALEnd), and nothing is in flight on
	// the wire. A consumer with nothing pending may acknowledge LSN, so that
	// the slot moves while published tables are quiet.
	Keepalive
	// Canary is a canary written by EmitCanary for this stream's slot,
	// inside the transaction that carries it: Token is its token, and LSN
	// its position. Streams that do not pass messages (see
	// Stream.Messages) never send one.
	Canary

	// The events of a transaction streamed while it runs (see
	// Config.Streaming): the server sends it in blocks, each between a
	// StreamStart and a StreamStop, and ends it with a StreamCommit or a
	// StreamAbort, between blocks. The RowChange and Canary events of a
	// block carry the streamed transaction's XID; blocks of several
	// transactions may interleave, but never nest.

	// StreamStart opens a block of transaction XID; First is true for its
	// first block.
	StreamStart
	// StreamStop closes the open block.
	StreamStop
	// StreamCommit commits streamed transaction XID: Final is the position
	// of its commit record, LSN its end LSN (to acknowledge, as a Commit's),
	// CommitTime its commit time.
	StreamCommit
	// StreamAbort aborts SubXID, a subtransaction of streamed transaction
	// XID, or the whole transaction when SubXID is XID.
	StreamAbort
)

// Event is one step of the stream.
type Event struct {
	Kind       EventKind
	LSN        pglogrepl.LSN
	XID        uint32               // Begin, StreamStart, StreamCommit, StreamAbort; and RowChange and Canary in a streamed block
	CommitTime time.Time            // Commit and StreamCommit only
	Change     pginvalidator.Change // RowChange only
	Token      string               // Canary only
	Final      pglogrepl.LSN        // StreamCommit only
	SubXID     uint32               // StreamAbort only
	First      bool                 // StreamStart only
}

// Config says where to stream from.
type Config struct {
	// URL is a PostgreSQL URL or keyword/value DSN; replication=database is
	// added to it.
	URL         string
	Slot        string
	Publication string
	// StatusInterval is the longest time between two status updates. Zero
	// means 5s, well inside the server's default wal_sender_timeout of 60s.
	StatusInterval time.Duration
	// Timeout is how long the stream waits on a server that sends nothing,
	// the counterpart of the server's wal_receiver_timeout: after half of it
	// a status update asks the server for a reply, after all of it Run fails
	// with a *SilenceError. It also sets TCP keepalives and the connect
	// timeout (see SetTimeouts). Zero means DefaultTimeout.
	Timeout time.Duration
	// ChunkSize caps the events handed over at once. Zero means 512.
	ChunkSize int
	// Streaming, when true, asks a server of PostgreSQL 14 or later for
	// pgoutput protocol 2 with streaming on: a transaction that outgrows
	// logical_decoding_work_mem is sent while it runs, in blocks (see
	// StreamStart), instead of in one piece after its commit. False, and
	// below 14: protocol 1.
	Streaming bool
	// DecodingWorkMem, when not empty, is the walsender's
	// logical_decoding_work_mem for this connection ("16MB"): past it, a
	// transaction in the reorder buffer is streamed (or, without
	// streaming, spilled to disk). Empty: the server's setting.
	DecodingWorkMem string
	// Failover, when true, makes the slot a failover slot on PostgreSQL 17
	// and later (see Stream.EnsureSlot), so that standbys with
	// sync_replication_slots = on keep a copy that survives a failover.
	Failover bool
	// Logger receives state changes. Nil means slog.Default().
	Logger *slog.Logger
}

// Stream is one replication session on one connection. Use Connect, then
// Run; call Ack from any goroutine; Close when done.
type Stream struct {
	cfg  Config
	conn *pgconn.PgConn
	log  *slog.Logger

	relations map[uint32]*pginvalidator.Relation // read and written by Run's reader only
	arena     arena                              // backs the rows of the chunk being built; reader only
	sock      *socketReader                      // the connection's reads; reader only
	behind    atomic.Bool                        // the last commit decoded was old: read in bulk

	status    *statusReporter // carries Ack's position to the server: see status.go
	silent    atomic.Int64    // how long the server had been silent when the stream gave up on it; 0 while it has not
	started   bool
	messages  bool   // Start asked pgoutput for logical decoding messages
	streaming bool   // Start asked pgoutput to stream large transactions (protocol 2)
	streamXID uint32 // the transaction whose streamed block is open; 0: none. Reader only

	live   LiveHandler  // takes live chunks on the reader's goroutine; nil: every chunk goes through the channel
	queued atomic.Int64 // chunks sent through the channel that the consumer has not yet reported Handled
	free   chan []Event // chunks the consumer is done with, for the reader to fill again
}

// LiveHandler handles a chunk of events on the reader's goroutine, as the
// consumer would have handled it from Run's channel. It returns false when
// it declines the chunk, which then goes through the channel. An error ends
// Run with that error.
type LiveHandler func(chunk []Event) (handled bool, err error)

// HandleLive makes Run give h the chunks it hands over while the stream is
// live (see Behind) and every chunk sent through the channel has been
// reported Handled, so that events stay in WAL order. Call it before Run.
// A consumer that sets h calls Handled once it has handled each chunk it
// received from the channel.
//
// On a live stream a transaction arrives in a few small reads: handling
// them where they were read spares the wake-up of the consumer's
// goroutine, which is most of what a pipelined daemon would add to the
// time from COMMIT to the key's deletion. While behind, the channel keeps
// reading the socket apart from applying to Redis.
func (s *Stream) HandleLive(h LiveHandler) { s.live = h }

// Handled reports that the consumer has handled chunk, which it received
// from Run's channel, and keeps none of its events: the reader fills it
// again. Only a consumer that called HandleLive calls it.
func (s *Stream) Handled(chunk []Event) {
	s.queued.Add(-1)
	clear(chunk) // the rows it points to may go
	select {
	case s.free <- chunk[:0]:
	default:
	}
}

// newChunk returns an empty chunk: one the consumer is done with, or a new
// one. A backlog read in small pieces hands over many small chunks.
func (s *Stream) newChunk() []Event {
	select {
	case c := <-s.free:
		return c
	default:
		return make([]Event, 0, s.cfg.ChunkSize)
	}
}

// Connect opens a replication connection with the text settings pinned.
func Connect(ctx context.Context, cfg Config) (*Stream, error) {
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = 5 * time.Second
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = 512
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dsn, err := ReplicationURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	pcfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url %s: %w", redact.URL(cfg.URL), redact.Error(err, cfg.URL))
	}
	if err := SetTimeouts(pcfg, cfg.Timeout); err != nil {
		return nil, fmt.Errorf("postgres url %s: %w", redact.URL(cfg.URL), err)
	}
	for k, v := range TextSettings {
		pcfg.RuntimeParams[k] = v
	}
	if cfg.DecodingWorkMem != "" {
		pcfg.RuntimeParams["logical_decoding_work_mem"] = cfg.DecodingWorkMem
	}
	s := &Stream{
		cfg:       cfg,
		log:       cfg.Logger,
		relations: make(map[uint32]*pginvalidator.Relation),
		status:    newStatusReporter(cfg.Timeout),
		free:      make(chan []Event, 8),
	}
	pcfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		s.sock = newSocketReader(r, w, &s.behind)
		return pgproto3.NewFrontend(s.sock, w)
	}
	s.conn, err = pgconn.ConnectConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect for replication: %w", redact.Error(err, cfg.URL))
	}
	s.status.conn = s.conn
	return s, nil
}

// Start sends START_REPLICATION at LSN 0, so the server resumes at the slot's
// confirmed_flush_lsn. On PostgreSQL 14 and later it asks pgoutput for
// logical decoding messages too (messages 'true'), which carry the
// canaries; see Messages. After a failed Start the connection is unusable:
// Close it and connect again. A slot the server has invalidated is a
// *SlotError that says what to do; SlotInvalidated reports it. With
// Config.Streaming, on PostgreSQL 14 and later, it asks for protocol 2 and
// streaming 'on'; see Streaming.
func (s *Stream) Start(ctx context.Context) error {
	major := serverMajor(s.conn.ParameterStatus("server_version"))
	messages := major >= 14
	streaming := s.cfg.Streaming && major >= 14
	proto := "1"
	if streaming {
		proto = "2"
	}
	args := []string{
		"proto_version '" + proto + "'",
		fmt.Sprintf("publication_names '%s'", quoteIdent(s.cfg.Publication)),
	}
	if messages {
		args = append(args, "messages 'true'")
	}
	if streaming {
		args = append(args, "streaming 'on'")
	}
	err := pglogrepl.StartReplication(ctx, s.conn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		if SlotInvalidated(err) {
			return invalidatedError(s.cfg.Slot, err)
		}
		return fmt.Errorf("start replication on slot %s: %w", s.cfg.Slot, err)
	}
	s.started, s.messages, s.streaming = true, messages, streaming
	return nil
}

// Streaming reports whether the started stream sends large transactions
// while they run (protocol 2, PostgreSQL 14 and later; see
// Config.Streaming).
func (s *Stream) Streaming() bool { return s.streaming }

// Messages reports whether the started stream passes logical decoding
// messages, and so Canary events: PostgreSQL 14 and later (pgoutput's
// messages option is new in 14).
func (s *Stream) Messages() bool { return s.messages }

// serverMajor returns the major version in a server_version parameter
// ("15.4 (Debian 15.4-1)", "17beta1"); 0 when it holds none.
func serverMajor(v string) int {
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// Ack records that everything up to lsn has been applied. The position goes
// to the server with the next status update, which Ack asks for: at once,
// unless one went out less than minStatusGap ago, and then once that much
// time has passed. status.go says how.
func (s *Stream) Ack(lsn pglogrepl.LSN) { s.status.ack(lsn) }

// Behind reports whether the last commit decoded was old: the stream is
// catching up on a backlog rather than following live traffic.
func (s *Stream) Behind() bool { return s.behind.Load() }

// Acked returns the highest acknowledged position.
func (s *Stream) Acked() pglogrepl.LSN { return s.status.acknowledged() }

// PID returns the process ID of the walsender serving the stream.
func (s *Stream) PID() uint32 { return s.conn.PID() }

// SilenceError says that the server sent nothing for Waited, though asked
// for a reply: its host is gone without closing the connection (power lost,
// a NAT entry dropped, a virtual IP moved), or the network between is. The
// walsender on the other end may still live and hold the slot until the
// server's wal_sender_timeout ends it; TerminateSlotHolder ends it sooner.
type SilenceError struct {
	Waited  time.Duration // how long nothing came
	Timeout time.Duration // the stream's Timeout
}

func (e *SilenceError) Error() string {
	return fmt.Sprintf("replication connection silent: nothing received from the server for %s, though a reply was asked for after %s (timeout %s); dropping it",
		e.Waited.Round(time.Millisecond), (e.Timeout / 2).Round(time.Millisecond), e.Timeout)
}

// Run reads the stream and hands events to out, in chunks, until ctx is done
// or the connection fails. A status update goes out every StatusInterval
// meanwhile. Run returns ctx.Err() when ctx ends it; any other error means
// the connection is lost and the caller should Close and reconnect.
func (s *Stream) Run(ctx context.Context, out chan<- []Event) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	senderErr := make(chan error, 1)
	go func() { senderErr <- s.sendStatusLoop(ctx) }()

	err := s.receiveLoop(ctx, out)
	cancel()
	if serr := <-senderErr; err == nil || (ctx.Err() != nil && serr != nil && !errors.Is(serr, context.Canceled)) {
		err = serr
	}
	return err
}

// sendStatusLoop is the status sender of status.go: it sends a status
// update every StatusInterval and whenever Ack or a keepalive asks for one,
// minStatusGap apart at least unless the server asked. It also watches for a silent server: once the
// reader has waited on the socket for Timeout/2, a status update asks for a
// reply; once it has waited for Timeout, the connection's deadline is set in
// the past, which ends the reader's wait (and any write blocked on a full
// socket), and the stream fails with a *SilenceError.
func (s *Stream) sendStatusLoop(ctx context.Context) error {
	t := time.NewTicker(s.cfg.StatusInterval)
	defer t.Stop()
	half := s.cfg.Timeout / 2
	watch := time.NewTimer(half)
	defer watch.Stop()
	var asked int64 // the silence a reply was last asked for in, by the start of its read
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	defer gap.Stop()
	for {
		ask := false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-gap.C:
			if !s.status.gapEnded() {
				continue // an update went out meanwhile, with every acknowledgement so far
			}
		case <-s.status.poke:
			if wait := s.status.woken(); wait > 0 {
				gap.Reset(wait)
				continue
			}
		case <-watch.C:
			since, quiet := s.sock.silence()
			switch {
			case quiet >= s.cfg.Timeout:
				s.silent.Store(int64(quiet))
				s.conn.Conn().SetDeadline(time.Now())
				return nil
			case quiet >= half:
				ask, asked = since != asked, since
				watch.Reset(s.cfg.Timeout - quiet)
			default:
				watch.Reset(half - quiet)
			}
			if !ask {
				continue
			}
		}
		if err := s.status.send(ask); err != nil {
			return err
		}
	}
}

// receiveLoop reads messages and forwards decoded events.
func (s *Stream) receiveLoop(ctx context.Context, out chan<- []Event) error {
	// pgconn would watch ctx anew for every message it receives, which cost
	// the daemon a sixth of its CPU time on a backlog of small transactions.
	// One watch for the whole loop does the same: cancelling ctx sets a read
	// deadline in the past, the blocked read returns a timeout, which pgconn
	// does not treat as fatal, and the deadline is cleared on the way out.
	nc := s.conn.Conn()
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		nc.SetReadDeadline(time.Now())
		close(interrupted)
	})
	defer func() {
		if !stop() {
			<-interrupted
			nc.SetReadDeadline(time.Time{})
		}
	}()
	chunk := s.newChunk()
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if s.live != nil && !s.behind.Load() && s.queued.Load() == 0 && s.streamXID == 0 {
			var handled bool
			err := s.status.live(func() (err error) {
				handled, err = s.live(chunk)
				return err
			})
			if err != nil {
				return err
			}
			if handled {
				// The handler keeps no event, so the chunk's slice
				// is reused; the arena only ever appends, so the
				// rows' bytes it handed out stay as they were.
				chunk = chunk[:0]
				return nil
			}
		}
		if s.live != nil {
			s.queued.Add(1)
		}
		select {
		case out <- chunk:
		case <-ctx.Done():
			return ctx.Err()
		}
		chunk = s.newChunk()
		return nil
	}
	for {
		// Hand over what we have before we might block on the socket: the
		// consumer flushes to Redis exactly when the stream runs dry.
		if len(chunk) >= s.cfg.ChunkSize || s.conn.Frontend().ReadBufferLen()+s.sock.Buffered() == 0 {
			if err := flush(); err != nil {
				return err
			}
		}
		msg, err := s.conn.ReceiveMessage(context.Background()) // ctx is watched above
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if d := s.silent.Load(); d != 0 {
				return &SilenceError{Waited: time.Duration(d), Timeout: s.cfg.Timeout}
			}
			return fmt.Errorf("receive replication message: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			chunk, err = s.handleCopyData(chunk, msg.Data)
			if err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("replication stream: server ended the copy")
		default:
			// NoticeResponse, ParameterStatus and the like: nothing to do.
		}
	}
}

func (s *Stream) handleCopyData(chunk []Event, data []byte) ([]Event, error) {
	if len(data) == 0 {
		return chunk, nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return chunk, fmt.Errorf("parse keepalive: %w", err)
		}
		s.behind.Store(false)  // the server had time to send a keepalive
		if ka.ReplyRequested { // answered at once, whatever minStatusGap says
			s.status.replyAsked()
		}
		return append(chunk, Event{Kind: Keepalive, LSN: ka.ServerWALEnd}), nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return chunk, fmt.Errorf("parse xlog data: %w", err)
		}
		return s.decode(chunk, xld)
	}
	return chunk, nil
}

// decode turns one pgoutput message into events. Row messages, nearly all
// of a busy stream, go through decodeRow; the rest through pglogrepl, whose
// decoders do no bounds checks, so a panic on a short message becomes a
// connection error.
func (s *Stream) decode(chunk []Event, xld pglogrepl.XLogData) (_ []Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode pgoutput message at %s: %v", xld.WALStart, r)
		}
	}()
	data := xld.WALData
	if len(data) == 0 {
		return chunk, fmt.Errorf("decode pgoutput message at %s: empty message", xld.WALStart)
	}
	switch data[0] {
	case 'I', 'U', 'D':
		body := data[1:]
		if s.streamXID != 0 { // a streamed block's rows carry their (sub)transaction's xid first
			if len(body) < 4 {
				return chunk, fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, errShort)
			}
			body = body[4:]
		}
		m, err := decodeRowBody(data[0], body, &s.arena)
		if err != nil {
			return chunk, fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
		}
		rel, err := s.relation(m.relationID)
		if err != nil {
			return chunk, err
		}
		return append(chunk, Event{Kind: RowChange, LSN: xld.WALStart, XID: s.streamXID, Change: pginvalidator.Change{
			Rel: rel, Op: m.op, Old: m.old, New: m.new, OldKeyOnly: m.oldKeyOnly,
		}}), nil
	}
	if s.streaming {
		return s.decodeV2(chunk, xld)
	}
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return chunk, fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
	}
	return s.decodeMessage(chunk, xld, msg)
}

// decodeV2 decodes a message of protocol 2 other than a row message: the
// stream messages, and the others with the xid they carry inside a block.
func (s *Stream) decodeV2(chunk []Event, xld pglogrepl.XLogData) ([]Event, error) {
	msg, err := pglogrepl.ParseV2(xld.WALData, s.streamXID != 0)
	if err != nil {
		return chunk, fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.StreamStartMessageV2:
		// A streamed block is a backlog: the transaction outgrew the
		// walsender's memory. It is read as one (see socketReader).
		s.streamXID = m.Xid
		s.behind.Store(true)
		return append(chunk, Event{Kind: StreamStart, LSN: xld.WALStart, XID: m.Xid, First: m.FirstSegment == 1}), nil
	case *pglogrepl.StreamStopMessageV2:
		s.streamXID = 0
		return append(chunk, Event{Kind: StreamStop, LSN: xld.WALStart}), nil
	case *pglogrepl.StreamCommitMessageV2:
		s.behind.Store(time.Since(m.CommitTime) > behindAfter)
		return append(chunk, Event{Kind: StreamCommit, LSN: m.TransactionEndLSN, Final: m.CommitLSN, XID: m.Xid,
			CommitTime: m.CommitTime}), nil
	case *pglogrepl.StreamAbortMessageV2:
		return append(chunk, Event{Kind: StreamAbort, LSN: xld.WALStart, XID: m.Xid, SubXID: m.SubXid}), nil
	case *pglogrepl.RelationMessageV2:
		return s.decodeMessage(chunk, xld, &m.RelationMessage)
	case *pglogrepl.TruncateMessageV2:
		return s.decodeMessage(chunk, xld, &m.TruncateMessage)
	case *pglogrepl.LogicalDecodingMessageV2:
		return s.decodeMessage(chunk, xld, &m.LogicalDecodingMessage)
	}
	return s.decodeMessage(chunk, xld, msg)
}

// decodeMessage turns a message other than a row message into events. Inside
// a streamed block, they carry the block's xid.
func (s *Stream) decodeMessage(chunk []Event, xld pglogrepl.XLogData, msg pglogrepl.Message) ([]Event, error) {
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		chunk = append(chunk, Event{Kind: Begin, LSN: m.FinalLSN, XID: m.Xid})
	case *pglogrepl.CommitMessage:
		chunk = append(chunk, Event{Kind: Commit, LSN: m.TransactionEndLSN, CommitTime: m.CommitTime})
		s.behind.Store(time.Since(m.CommitTime) > behindAfter)
	case *pglogrepl.RelationMessage:
		s.relations[m.RelationID] = relationOf(m)
	case *pglogrepl.LogicalDecodingMessage:
		if token, ok := canaryToken(m.Prefix, m.Content, s.cfg.Slot); ok {
			chunk = append(chunk, Event{Kind: Canary, LSN: xld.WALStart, XID: s.streamXID, Token: token})
		}
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			rel, err := s.relation(id)
			if err != nil {
				return chunk, err
			}
			chunk = append(chunk, Event{Kind: RowChange, LSN: xld.WALStart, XID: s.streamXID, Change: pginvalidator.Change{
				Rel: rel, Op: pginvalidator.OpTruncate,
			}})
		}
	default:
		// Type and Origin messages, and other logical decoding messages,
		// carry nothing to invalidate.
	}
	return chunk, nil
}

// behindAfter is how old a decoded commit must be for the stream to count as
// catching up on a backlog rather than following live traffic. It also
// absorbs modest clock skew between the database and this host.
const behindAfter = 100 * time.Millisecond

func (s *Stream) relation(id uint32) (*pginvalidator.Relation, error) {
	rel, ok := s.relations[id]
	if !ok {
		// The server always announces a relation before its first change in
		// a session; a change without one is a protocol error.
		return nil, fmt.Errorf("decode pgoutput: change for relation %d before its Relation message", id)
	}
	return rel, nil
}

func relationOf(m *pglogrepl.RelationMessage) *pginvalidator.Relation {
	rel := &pginvalidator.Relation{
		ID:              m.RelationID,
		Schema:          m.Namespace,
		Name:            m.RelationName,
		ReplicaIdentity: m.ReplicaIdentity,
		Columns:         make([]pginvalidator.Column, len(m.Columns)),
	}
	for i, c := range m.Columns {
		rel.Columns[i] = pginvalidator.Column{Name: c.Name, TypeOID: c.DataType, Key: c.Flags&1 != 0}
	}
	return rel
}

// Close sends a last status update with the acknowledged position, when the
// stream was started, and closes the connection.
func (s *Stream) Close(ctx context.Context) error {
	var err error
	if s.started && !s.conn.IsClosed() && s.silent.Load() == 0 {
		err = s.status.send(false)
	}
	if cerr := s.conn.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

func quoteIdent(name string) string {
	out := make([]byte, 0, len(name)+2)
	out = append(out, '"')
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '"':
			out = append(out, '"', '"')
		case '\'':
			out = append(out, '\'', '\'')
		default:
			out = append(out, name[i])
		}
	}
	return string(append(out, '"'))
}
