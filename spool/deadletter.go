package spool

import (
	"context"
	"encoding/json"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// DeadLetter stores dead letters, fsynced like a block. Unlike Append it
// works in a full spool: see appendReq.force.
func (s *Spool) DeadLetter(ctx context.Context, dls []DeadLetter) error {
	return s.submitAndWait(ctx, nil, dls, true)
}

// DeadLetters calls fn for each dead letter f selects, oldest first, up to
// f.Limit. An error from fn stops the walk and is returned.
func (s *Spool) DeadLetters(f Filter, fn func(DeadLetter) error) error {
	n := 0
	return s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDead}, PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if f.Limit > 0 && n >= f.Limit {
				return nil
			}
			var d DeadLetter
			err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &d) })
			if err != nil {
				return fmt.Errorf("decode dead letter %x: %w", it.Item().Key(), err)
			}
			if !f.Matches(&d) {
				continue
			}
			n++
			if err := fn(d); err != nil {
				return err
			}
		}
		return nil
	})
}

// Replay puts the dead letters f selects back on their destination's
// queue (every destination's, for ingest-time rejects), with the same
// event and write key, and then removes them from the store. A crash
// between the two replays them twice: at-least-once, like everything else.
//
// A dead letter of a destination the spool has no consumer for stays in
// the store: replayed, it would reach nobody and be reclaimed with its
// generation. A spool opened without consumers (to work on a stopped one)
// replays them all, for whichever destinations the next run has.
func (s *Spool) Replay(ctx context.Context, f Filter) (int, error) {
	if f.Destination != "" && len(s.consumers) > 0 {
		if _, ok := s.consumers[f.Destination]; !ok {
			return 0, fmt.Errorf("destination %q is not configured, so its replayed events would be delivered nowhere: %w", f.Destination, ErrUnknownConsumer)
		}
	}
	var picked []DeadLetter
	if err := s.DeadLetters(f, func(d DeadLetter) error { picked = append(picked, d); return nil }); err != nil {
		return 0, err
	}
	replayable := func(d DeadLetter) bool {
		if d.Reason == ReasonCorrupt {
			return false // its events are unreadable; only purge removes it
		}
		_, configured := s.consumers[d.Destination]
		return d.Destination == "" || configured || len(s.consumers) == 0
	}
	events := make([]Event, 0, len(picked))
	for _, d := range picked {
		if replayable(d) {
			events = append(events, Event{WriteKey: d.WriteKey, Dest: d.Destination, Data: d.Event})
		}
	}
	if len(events) == 0 {
		return 0, nil
	}
	if err := s.Append(ctx, events, nil); err != nil {
		return 0, fmt.Errorf("append replayed events: %w", err)
	}
	if err := s.deleteDead(picked, replayable); err != nil {
		return 0, err
	}
	return len(events), nil
}

// Purge deletes the dead letters f selects.
func (s *Spool) Purge(f Filter) (int, error) {
	var picked []DeadLetter
	if err := s.DeadLetters(f, func(d DeadLetter) error { picked = append(picked, d); return nil }); err != nil {
		return 0, err
	}
	return len(picked), s.deleteDead(picked, func(DeadLetter) bool { return true })
}

func (s *Spool) deleteDead(dls []DeadLetter, keep func(DeadLetter) bool) error {
	wb := s.meta.NewWriteBatch()
	defer wb.Cancel()
	n := 0
	for _, d := range dls {
		if !keep(d) {
			continue
		}
		if err := wb.Delete(deadKey(d.ID)); err != nil {
			return fmt.Errorf("delete dead letter: %w", err)
		}
		n++
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("delete dead letters: %w", err)
	}
	if s.cfg.Sync == SyncAlways {
		if err := s.meta.Sync(); err != nil {
			return fmt.Errorf("sync dead letter deletes: %w", err)
		}
	}
	s.metrics.deadLetters.Sub(float64(n))
	return nil
}
