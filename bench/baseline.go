package main

// The baseline: the loop a user would write from pglogrepl's example
// (example/pglogrepl_demo) plus go-redis, without pg-invalidator. It
// receives one message at a time, sends one DEL per key of each changed row
// and acknowledges each commit as soon as its DELs have returned. It is
// meant to be simple and correct, not slow on purpose: it reads the same
// stream, renders the same keys from the old and the new row, and confirms
// the same positions as the daemon.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/redis/go-redis/v9"
)

// baselineMain is "bench baseline": it streams until SIGTERM.
func baselineMain(args []string) int {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	pgURL := fs.String("postgres", "", "PostgreSQL URL")
	redisURL := fs.String("redis", "", "Redis URL")
	slot := fs.String("slot", "", "replication slot (must exist)")
	pub := fs.String("publication", publication, "publication")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := runBaseline(ctx, *pgURL, *redisURL, *slot, *pub)
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		return 1
	}
	return 0
}

// baselineKeys are the rules, written out by hand as a user would.
func baselineKeys(table string, values map[string]string) []string {
	switch table {
	case "items":
		return []string{"item:" + values["id"], "items:cat:" + values["cat"]}
	case "other":
		return []string{"other:" + values["id"]}
	}
	return nil
}

func runBaseline(ctx context.Context, pgURL, redisURL, slot, pub string) error {
	conn, err := pgconn.Connect(ctx, pgURL+"&replication=database")
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := newRedisClient(opts.Addr)
	defer rdb.Close()

	// Start at the slot's confirmed_flush_lsn.
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + pub + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication: %w", err)
	}

	const standbyMessageTimeout = 10 * time.Second
	nextStandbyMessageDeadline := time.Now().Add(standbyMessageTimeout)
	relations := map[uint32]*pglogrepl.RelationMessage{}
	var confirmed pglogrepl.LSN // the last position whose changes are all in Redis
	inTx := false

	sendStatus := func() error {
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: confirmed})
		nextStandbyMessageDeadline = time.Now().Add(standbyMessageTimeout)
		return err
	}
	del := func(relationID uint32, tuples ...*pglogrepl.TupleData) error {
		rel, ok := relations[relationID]
		if !ok {
			return fmt.Errorf("unknown relation ID %d", relationID)
		}
		seen := map[string]bool{}
		for _, tuple := range tuples {
			if tuple == nil {
				continue
			}
			values := map[string]string{}
			for i, col := range tuple.Columns {
				if col.DataType == 't' {
					values[rel.Columns[i].Name] = string(col.Data)
				}
			}
			for _, key := range baselineKeys(rel.RelationName, values) {
				if seen[key] {
					continue
				}
				seen[key] = true
				if err := rdb.Del(ctx, key).Err(); err != nil {
					return fmt.Errorf("del %s: %w", key, err)
				}
			}
		}
		return nil
	}

	for {
		if time.Now().After(nextStandbyMessageDeadline) {
			if err := sendStatus(); err != nil {
				return fmt.Errorf("send standby status: %w", err)
			}
		}
		rctx, cancel := context.WithDeadline(ctx, nextStandbyMessageDeadline)
		rawMsg, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		if errMsg, ok := rawMsg.(*pgproto3.ErrorResponse); ok {
			return fmt.Errorf("server error: %s", errMsg.Message)
		}
		msg, ok := rawMsg.(*pgproto3.CopyData)
		if !ok {
			continue
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return err
			}
			// Between transactions every change sent is in Redis already.
			if !inTx && pkm.ServerWALEnd > confirmed {
				confirmed = pkm.ServerWALEnd
			}
			if pkm.ReplyRequested {
				nextStandbyMessageDeadline = time.Time{}
			}

		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return err
			}
			logicalMsg, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return fmt.Errorf("parse logical replication message: %w", err)
			}
			switch m := logicalMsg.(type) {
			case *pglogrepl.RelationMessage:
				relations[m.RelationID] = m
			case *pglogrepl.BeginMessage:
				inTx = true
			case *pglogrepl.InsertMessage:
				err = del(m.RelationID, m.Tuple)
			case *pglogrepl.UpdateMessage:
				err = del(m.RelationID, m.NewTuple, m.OldTuple)
			case *pglogrepl.DeleteMessage:
				err = del(m.RelationID, m.OldTuple)
			case *pglogrepl.CommitMessage:
				// Every DEL of the transaction has returned: acknowledge it.
				inTx = false
				confirmed = m.TransactionEndLSN
				err = sendStatus()
			}
			if err != nil {
				return err
			}
		}
	}
}
