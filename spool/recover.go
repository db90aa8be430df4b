package spool

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"sync"

	badger "github.com/dgraph-io/badger/v4"
)

// recover rebuilds the in-memory state from disk: the generations, the
// next sequence number and every consumer's cursor. A consumer without a
// cursor starts at the oldest stored event, so a newly added destination
// receives the backlog. A generation that cannot be opened stops the
// start-up with its name: guessing past damage could lose intact data.
func (s *Spool) recover(gens []*generation, ahead *generationAhead) error {
	if err := s.recoverGenerations(gens); err != nil {
		return err
	}
	pos, err := s.readPositions()
	if err != nil {
		return fmt.Errorf("read cursors: %w", err)
	}
	// Cursors are a lower bound too: once every generation is removed,
	// numbering must not restart below an acknowledged position.
	for _, c := range pos.cursors {
		s.next = max(s.next, c)
	}
	stored := s.next
	if err := s.resumeNumbering(); err != nil {
		return err
	}
	s.findHoles()
	for _, name := range s.cfg.Consumers {
		s.consumers[name] = s.resumeConsumer(name, pos, stored)
	}
	if err := s.loadQuarantined(); err != nil {
		return err
	}
	// Writing always continues in a fresh generation, so that every
	// generation the writer has left is only ever opened read-only.
	g, err := ahead.wait()
	if err != nil {
		return err
	}
	s.genMu.Lock()
	s.spare = g
	s.genMu.Unlock()
	return s.startGeneration()
}

// recoverGenerations opens every generation once, to learn its range and
// replay what a crash left in its memtables, removes the empty ones, and
// orders the rest by their first event.
func (s *Spool) recoverGenerations(gens []*generation) error {
	newest := s.scanGenerations(gens)
	kept := gens[:0]
	for i, g := range gens {
		s.nextGen = max(s.nextGen, g.num+1)
		last, err := newest[i].meta, newest[i].err
		if err != nil {
			return err
		}
		if g.blocks == 0 {
			// A spare opened ahead of need, or a generation whose every
			// write was lost with an unclean stop: nothing to keep.
			if err := g.remove(); err != nil {
				return err
			}
			continue
		}
		s.next = max(s.next, last.end())
		kept = append(kept, g)
	}
	// Oldest events first, as reclaiming, dropping and finding a block all
	// assume. The directories' numbers need not be in that order: the
	// writer makes its own next generation when the spare is not ready yet,
	// and the spare, made meanwhile with the number before, goes into use
	// after it.
	slices.SortFunc(kept, func(a, b *generation) int { return cmp.Compare(a.first, b.first) })
	s.gens = kept
	return nil
}

// scanWorkers is how many generations are opened and scanned at once at
// start-up: each open is mostly waiting on the file system, and a 1 GiB
// backlog is 250 generations, which one at a time kept a restarted
// spillway unready for most of a second.
const scanWorkers = 4

type scanned struct {
	meta blockMeta
	err  error
}

// scanGenerations scans every generation, scanWorkers at a time, and
// returns each one's newest block or error, in the order of gens.
func (s *Spool) scanGenerations(gens []*generation) []scanned {
	out := make([]scanned, len(gens))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(scanWorkers, len(gens)) {
		wg.Go(func() {
			for i := range next {
				out[i].meta, out[i].err = s.scanGeneration(gens[i])
			}
		})
	}
	for i := range gens {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

// scanGeneration settles g after a crash, sets its first event and block
// count, and returns its newest block.
func (s *Spool) scanGeneration(g *generation) (newest blockMeta, err error) {
	db, err := s.settleGeneration(g.dir)
	if err != nil {
		return blockMeta{}, err
	}
	first, last, n, err := scanBlocks(db)
	if err != nil {
		_ = db.Close()
		return blockMeta{}, fmt.Errorf("scan generation %s: %w", filepath.Base(g.dir), err)
	}
	if err := db.Close(); err != nil {
		return blockMeta{}, fmt.Errorf("close generation %s: %w", filepath.Base(g.dir), err)
	}
	g.blocks, g.first, g.end = n, first.first, last.end()
	return last, nil
}

// positions is what meta holds of each consumer, by name.
type positions struct {
	cursors, readMarks map[string]uint64
}

// readPositions reads every consumer's cursor and read mark.
func (s *Spool) readPositions() (positions, error) {
	pos := positions{cursors: map[string]uint64{}, readMarks: map[string]uint64{}}
	err := s.meta.View(func(txn *badger.Txn) error {
		if err := readPositionsUnder(txn, prefixCursor, "cursor", pos.cursors); err != nil {
			return err
		}
		if err := readPositionsUnder(txn, prefixReadMark, "read mark", pos.readMarks); err != nil {
			return err
		}
		return nil
	})
	return pos, err
}

// readPositionsUnder reads the sequence numbers stored under prefix, by
// consumer name.
func readPositionsUnder(txn *badger.Txn, prefix byte, what string, into map[string]uint64) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		if len(v) != 8 {
			return fmt.Errorf("%s %q: %d bytes, want 8", what, it.Item().Key()[1:], len(v))
		}
		into[string(it.Item().Key()[1:])] = binary.BigEndian.Uint64(v)
	}
	return nil
}

// resumeNumbering moves the next number up to the sequence lease: the
// numbers below it may have been handed out before a crash.
func (s *Spool) resumeNumbering() error {
	lease, err := readLease(s.cfg.Dir)
	if err != nil {
		return err
	}
	if lease > s.next {
		s.log.Info("numbering resumes at the sequence lease after an unclean stop", "stored_end", s.next, "next_seq", lease)
		s.next = lease
	}
	s.leased.Store(lease)
	return nil
}

// resumeConsumer sets up consumer name from its saved positions; stored
// is where the stored events end.
func (s *Spool) resumeConsumer(name string, pos positions, stored uint64) *consumer {
	c := &consumer{name: name}
	start, ok := pos.cursors[name]
	switch {
	case !ok && len(s.gens) > 0:
		start = s.gens[0].first
	case !ok || start >= stored:
		// Nothing is stored past it: the numbers skipped after a crash
		// are not backlog to wait on.
		start = s.next
	}
	c.cursor.Store(start)
	c.saved.Store(start)
	c.pos = start
	c.savedRead.Store(start)
	if read := min(pos.readMarks[name], s.next); ok && read > start {
		c.savedRead.Store(read)
	}
	return c
}

// findHoles lists the numbers below next that no generation holds: before
// the oldest, between two (each generation starts where numbering stood
// when the writer moved to it, after a crash at the lease), and after the
// newest, up to next.
func (s *Spool) findHoles() {
	from := uint64(0)
	for _, g := range s.gens {
		if g.first > from {
			s.holes = append(s.holes, numberingGap{from: from, to: g.first})
		}
		from = max(from, g.end)
	}
	if s.next > from {
		s.holes = append(s.holes, numberingGap{from: from, to: s.next})
	}
}
