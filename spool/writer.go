package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

type appendReq struct {
	events []Event
	dead   []DeadLetter
	size   int
	done   chan error
	// force skips the size bound and the free-space reserve: dead letters
	// from delivery must be storable in a full spool, or the events they
	// hold up could never be acknowledged and their space never freed.
	force bool
}

// Append stores events, and in the same commit the dead letters (events
// refused at ingest), and returns once they are durable per Config.Sync.
// Concurrent calls share one block and one fsync. On ErrFull or ErrClosed
// nothing of the call was stored.
func (s *Spool) Append(ctx context.Context, events []Event, dead []DeadLetter) error {
	return s.append(ctx, &appendReq{events: events, dead: dead})
}

func (s *Spool) append(ctx context.Context, r *appendReq) error {
	if len(r.events) == 0 && len(r.dead) == 0 {
		return nil
	}
	if s.closing.Load() {
		return ErrClosed
	}
	if err := s.Ready(); err != nil && !r.force {
		return err
	}
	r.done = make(chan error, 1)
	events := r.events
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
		case <-s.rotate:
			s.rotateGeneration()
			continue
		case <-s.quit:
			s.drainOnClose()
			return
		}
		group = s.gather(group)
		s.commit(group)
		if s.activeBytes >= genMaxBytes || time.Since(s.active.created) >= genMaxAge {
			s.rotateGeneration()
		}
	}
}

func (s *Spool) rotateGeneration() {
	if s.activeBytes == 0 {
		s.active.created = time.Now() // nothing to give back yet
		return
	}
	if err := s.startGeneration(); err != nil {
		// Writing on in the current generation is safe; it only delays
		// reclaiming space.
		s.log.Error("start new generation", "err", err)
		return
	}
	s.metrics.generations.Inc()
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
	if err := s.checkDiskRoom(); err != nil {
		var forced []*appendReq
		for _, r := range group {
			if r.force {
				forced = append(forced, r)
			} else {
				r.done <- err
			}
		}
		if group = forced; len(group) == 0 {
			return
		}
	}
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
	if len(dead) > 0 {
		// Dead letters first: if the block then fails, the client retries
		// and at worst a dead letter is stored twice, never lost.
		if err := s.storeDeadLetters(dead, stored, nil); err != nil {
			return err
		}
	}
	if len(events) == 0 {
		return nil
	}
	s.mu.Lock()
	first := s.next
	s.mu.Unlock()

	start := time.Now()
	body := encodeBody(make([]byte, 0, 64+len(events)*8+sizeOf(group)), stored, events)
	val := sealBlock(body)
	err := s.active.db.Update(func(txn *badger.Txn) error {
		return txn.Set(blockKey(first, uint32(len(events)), stored), val)
	})
	if err != nil {
		return s.writeError(err)
	}
	s.metrics.fsync.Observe(time.Since(start).Seconds())
	s.metrics.blocks.Inc()
	s.activeBytes += int64(len(val))
	s.active.mu.Lock()
	s.active.blocks++
	s.active.mu.Unlock()
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

// storeDeadLetters commits dead letters, and the marker key when given, in
// one meta transaction.
func (s *Spool) storeDeadLetters(dead []DeadLetter, at time.Time, marker []byte) error {
	firstID := s.nextDead.Add(uint64(len(dead))) - uint64(len(dead))
	err := s.meta.Update(func(txn *badger.Txn) error {
		if marker != nil {
			if err := txn.Set(marker, nil); err != nil {
				return err
			}
		}
		for i := range dead {
			d := dead[i]
			d.ID = firstID + uint64(i)
			if d.At.IsZero() {
				d.At = at
			}
			v, err := json.Marshal(&d)
			if err != nil {
				return fmt.Errorf("encode dead letter: %w", err)
			}
			if err := txn.Set(deadKey(d.ID), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.writeError(err)
	}
	s.metrics.deadLetters.Add(float64(len(dead)))
	return nil
}

func sizeOf(group []*appendReq) int {
	n := 0
	for _, r := range group {
		n += r.size
	}
	return n
}

// checkDiskRoom refuses a write when the file system is nearly full.
// Badger writes through mmapped files, where running out of space is a
// SIGBUS rather than an error, so we stop while room remains.
func (s *Spool) checkDiskRoom() error {
	free, err := freeBytes(s.cfg.Dir)
	if err != nil {
		return nil // unknown: let the write itself find out
	}
	if free < uint64(s.cfg.MinFreeBytes) {
		if !s.lowDisk.Swap(true) {
			s.log.Error("disk nearly full: refusing events until space returns", "free_bytes", free, "min_free_bytes", s.cfg.MinFreeBytes)
		}
		return fmt.Errorf("%w: %d bytes free on the spool's file system", ErrFull, free)
	}
	return nil
}

// writeError maps a failed write. A full disk is ErrFull so that clients
// retry later instead of giving up.
func (s *Spool) writeError(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		s.lowDisk.Store(true)
		s.log.Error("disk full: refusing events until space returns", "err", err)
		return fmt.Errorf("%w: %v", ErrFull, err)
	}
	return fmt.Errorf("write block: %w", err)
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
