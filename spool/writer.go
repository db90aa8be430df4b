package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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
	r.size = sizeOfEvents(r.events)
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

// Writing is a two-stage pipeline. writeLoop gathers every request that is
// waiting, numbers its events, and encodes and compresses them into blocks;
// commitLoop writes each group's blocks in one transaction, so one fsync
// acknowledges them all (group commit). While one group's fsync runs, the
// next group is gathered and compressed. The hand-over is unbuffered: a
// writer running further ahead would cut the requests arriving during one
// fsync into several small groups, each paying an fsync of its own.
type sealedGroup struct {
	reqs   []*appendReq
	dead   []DeadLetter
	blocks []sealedBlock
	rotate bool // not a group: start a new generation
}

type sealedBlock struct {
	key []byte
	recentBlock
}

// maxGroupBytes bounds the event bytes of one group commit. A group needs
// to hold what arrives during one fsync (a few ms: about 1 MiB at a quarter
// million events a second); more only holds memory, since up to three
// groups are alive at once (gathering, waiting, committing).
const maxGroupBytes = 2 << 20

func (s *Spool) writeLoop() {
	defer close(s.sealed)
	assigned := s.next // only this goroutine numbers events
	for {
		var first *appendReq
		select {
		case first = <-s.reqs:
		case <-s.rotate:
			s.sealed <- &sealedGroup{rotate: true}
			continue
		case <-s.quit:
			// Commit what senders handed over before they saw quit.
			for {
				select {
				case r := <-s.reqs:
					s.sealed <- s.seal(s.gather(r), &assigned)
				default:
					return
				}
			}
		}
		s.sealed <- s.seal(s.gather(first), &assigned)
	}
}

// gather takes the requests already waiting, up to maxGroupBytes.
func (s *Spool) gather(first *appendReq) []*appendReq {
	group := []*appendReq{first}
	size := first.size
	for size < maxGroupBytes {
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

// seal numbers the group's events from *assigned and builds its blocks.
func (s *Spool) seal(group []*appendReq, assigned *uint64) *sealedGroup {
	sg := &sealedGroup{reqs: group}
	if err := s.checkDiskRoom(); err != nil {
		// Only forced requests (dead letters from delivery) go on.
		kept := group[:0:0]
		for _, r := range group {
			if r.force {
				kept = append(kept, r)
			} else {
				r.done <- err
			}
		}
		sg.reqs = kept
	}
	stored := time.Now()
	// One backing array, reused from group to group, holds every chunk.
	all := s.sealing[:0]
	for _, r := range sg.reqs {
		sg.dead = append(sg.dead, r.dead...)
		all = append(all, r.events...)
	}
	defer func() { clear(all); s.sealing = all[:0] }() // hold no request's memory
	var chunks [][]Event
	start, size := 0, 0
	for i := range all {
		if size >= maxBlockBytes {
			chunks, start, size = append(chunks, all[start:i]), i, 0
		}
		size += sizeOfEvents(all[i : i+1])
	}
	if start < len(all) {
		chunks = append(chunks, all[start:])
	}
	sg.blocks = make([]sealedBlock, len(chunks))
	firsts := make([]uint64, len(chunks))
	for i, c := range chunks {
		firsts[i] = *assigned
		*assigned += uint64(len(c))
	}
	// Compression is most of a group's CPU: spread its blocks over the cores.
	var wg sync.WaitGroup
	for i, c := range chunks {
		wg.Go(func() { sg.blocks[i] = sealEvents(firsts[i], stored, c) })
	}
	wg.Wait()
	return sg
}

func sizeOfEvents(events []Event) int {
	n := 0
	for i := range events {
		n += len(events[i].Data) + len(events[i].WriteKey) + len(events[i].Dest)
	}
	return n
}

func sealEvents(first uint64, stored time.Time, events []Event) sealedBlock {
	buf := scratchBuffers.get()
	body := encodeBody((*buf)[:0], stored, events)
	val := sealBlock(body)
	*buf = body
	scratchBuffers.put(buf)
	m := blockMeta{first: first, count: uint32(len(events)), stored: stored}
	return sealedBlock{key: blockKey(m.first, m.count, m.stored), recentBlock: recentBlock{meta: m, val: val}}
}

// commitLoop is the only goroutine that writes to the active generation
// and replaces it.
func (s *Spool) commitLoop() {
	for sg := range s.sealed {
		if sg.rotate {
			s.rotateGeneration()
			continue
		}
		err := s.commitGroup(sg)
		for _, r := range sg.reqs {
			r.done <- err
		}
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

func (s *Spool) commitGroup(sg *sealedGroup) error {
	if len(sg.dead) > 0 {
		// Dead letters first: if the blocks then fail, the client retries
		// and at worst a dead letter is stored twice, never lost.
		if err := s.storeDeadLetters(sg.dead, time.Now(), nil); err != nil {
			return err
		}
	}
	if len(sg.blocks) == 0 {
		return nil
	}
	start := time.Now()
	err := s.active.db.Update(func(txn *badger.Txn) error {
		for _, b := range sg.blocks {
			if err := txn.Set(b.key, b.val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.writeError(err)
	}
	s.metrics.fsync.Observe(time.Since(start).Seconds())
	s.metrics.blocks.Add(float64(len(sg.blocks)))
	s.active.mu.Lock()
	s.active.blocks += len(sg.blocks)
	s.active.mu.Unlock()
	s.mu.Lock()
	for _, b := range sg.blocks {
		s.activeBytes += int64(len(b.val))
		s.next = b.meta.end()
		s.recent = append(s.recent, b.recentBlock)
		s.recentLen += len(b.val)
	}
	for s.recentLen > recentCacheBytes && len(s.recent) > 1 {
		s.recentLen -= len(s.recent[0].val)
		s.recent[0] = recentBlock{}
		s.recent = s.recent[1:]
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func (s *Spool) storeDeadLetters(dead []DeadLetter, at time.Time, marker []byte) error {
	firstID := s.nextDead.Add(uint64(len(dead))) - uint64(len(dead))
	err := s.updateMeta(func(set func(k, v []byte) error) error {
		if marker != nil {
			if err := set(marker, nil); err != nil {
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
			if err := set(deadKey(d.ID), v); err != nil {
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

// updateMeta writes what fill sets to the meta store, committing as many
// transactions as Badger's size limit needs: a group of requests full of
// rejected events holds more than one transaction may. A crash between
// them keeps the earlier ones, and the client, never answered, retries:
// a dead letter may be stored twice, never lost.
func (s *Spool) updateMeta(fill func(set func(k, v []byte) error) error) error {
	txn := s.meta.NewTransaction(true)
	defer func() { txn.Discard() }()
	set := func(k, v []byte) error {
		err := txn.Set(k, v)
		if !errors.Is(err, badger.ErrTxnTooBig) {
			return err
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		txn = s.meta.NewTransaction(true)
		return txn.Set(k, v)
	}
	if err := fill(set); err != nil {
		return err
	}
	return txn.Commit()
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
