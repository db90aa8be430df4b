package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"
)

type appendReq struct {
	events []Event
	dead   []DeadLetter
	size   int
	done   chan error
}

// Append stores events, and in the same commit the dead letters (events
// refused at ingest), and returns once they are durable per Config.Sync.
// Concurrent calls share one block and one fsync. On ErrFull or ErrClosed
// nothing of the call was stored.
func (s *Spool) Append(ctx context.Context, events []Event, dead []DeadLetter) error {
	if len(events) == 0 && len(dead) == 0 {
		return nil
	}
	if err := s.Ready(); err != nil {
		return err
	}
	r := &appendReq{events: events, dead: dead, done: make(chan error, 1)}
	for i := range events {
		r.size += len(events[i].Data) + len(events[i].WriteKey) + len(events[i].Dest)
	}
	select {
	case s.reqs <- r:
	case <-s.quit:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// The writer reads the caller's slices until it replies, so even a
	// cancelled caller must wait for the reply.
	return <-r.done
}

// writeLoop is the only goroutine that writes blocks. Requests that arrive
// while a commit (and its fsync) runs queue up on the channel and go into
// the next block together: that is the group commit.
func (s *Spool) writeLoop() {
	var group []*appendReq
	for {
		select {
		case r := <-s.reqs:
			group = append(group[:0], r)
		case <-s.quit:
			s.drainOnClose()
			return
		}
		group = s.gather(group)
		s.commit(group)
	}
}

// gather adds already-waiting requests to group, up to maxBlockBytes.
func (s *Spool) gather(group []*appendReq) []*appendReq {
	size := group[0].size
	for size < maxBlockBytes {
		select {
		case r := <-s.reqs:
			group = append(group, r)
			size += r.size
		default:
			return group
		}
	}
	return group
}

// drainOnClose commits requests whose senders won the race with Close.
func (s *Spool) drainOnClose() {
	for {
		select {
		case r := <-s.reqs:
			s.commit(s.gather([]*appendReq{r}))
		default:
			return
		}
	}
}

func (s *Spool) commit(group []*appendReq) {
	err := s.commitGroup(group)
	for _, r := range group {
		r.done <- err
	}
}

func (s *Spool) commitGroup(group []*appendReq) error {
	var events []Event
	var dead []DeadLetter
	if len(group) == 1 {
		events, dead = group[0].events, group[0].dead
	} else {
		for _, r := range group {
			events = append(events, r.events...)
			dead = append(dead, r.dead...)
		}
	}
	stored := time.Now()
	s.mu.Lock()
	first := s.next
	s.mu.Unlock()

	start := time.Now()
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	var body []byte
	if len(events) > 0 {
		body = encodeBody(make([]byte, 0, 64+len(events)*8+sizeOf(group)), stored, events)
		if err := txn.Set(blockKey(first, uint32(len(events)), stored), sealBlock(body)); err != nil {
			return s.writeError(err)
		}
	}
	firstDead := s.nextDead.Load()
	for i := range dead {
		d := dead[i]
		d.ID = firstDead + uint64(i)
		if d.At.IsZero() {
			d.At = stored
		}
		v, err := json.Marshal(&d)
		if err != nil {
			return fmt.Errorf("encode dead letter: %w", err)
		}
		if err := txn.Set(deadKey(d.ID), v); err != nil {
			return s.writeError(err)
		}
	}
	if err := txn.Commit(); err != nil {
		return s.writeError(err)
	}
	s.metrics.fsync.Observe(time.Since(start).Seconds())
	s.nextDead.Add(uint64(len(dead)))
	if len(dead) > 0 {
		s.metrics.deadLetters.Add(float64(len(dead)))
	}
	if len(events) == 0 {
		return nil
	}
	s.metrics.blocks.Inc()
	// The block is decoded from our own fresh body buffer, so consumers
	// that keep up read it from memory, never from disk.
	blk, err := decodeBody(first, body)
	if err != nil {
		return fmt.Errorf("decode own block: %w", err) // a bug, not bad data
	}
	s.mu.Lock()
	s.next = first + uint64(len(events))
	s.recent = append(s.recent, blk)
	s.recentLen += blk.bytes
	for s.recentLen > recentCacheBytes && len(s.recent) > 1 {
		s.recentLen -= s.recent[0].bytes
		s.recent[0] = nil
		s.recent = s.recent[1:]
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func sizeOf(group []*appendReq) int {
	n := 0
	for _, r := range group {
		n += r.size
	}
	return n
}

// writeError maps a failed write. A full disk is ErrFull so that clients
// retry later instead of giving up.
func (s *Spool) writeError(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		s.log.Error("disk full: refusing events until space returns", "err", err)
		return fmt.Errorf("%w: %v", ErrFull, err)
	}
	return fmt.Errorf("write block: %w", err)
}
