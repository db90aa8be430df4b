package spool

import (
	"errors"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"
)

const maintenanceEvery = time.Second

// maintenanceLoop saves cursors, removes generations every consumer has
// passed, closes unused ones, and keeps the size accounting that
// --spool-max-bytes and the free-space reserve need.
func (s *Spool) maintenanceLoop() {
	save := time.NewTicker(cursorSaveEvery)
	defer save.Stop()
	tick := time.NewTicker(maintenanceEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-save.C:
			if err := s.saveCursors(false); err != nil {
				s.log.Error("save cursors", "err", err)
			}
			continue
		case <-s.spareTaken:
			// At full load a generation fills in a fraction of a second:
			// waiting for the tick would leave the writer to open the
			// next one itself, stalling commits.
			s.prepareSpare()
			continue
		case <-tick.C:
		}
		s.reclaim()
		s.prepareSpare()
		s.leaseAhead()
		s.refreshSize()
		if s.cfg.WhenFull == DropOldest && s.full() {
			s.dropOldest()
		}
	}
}

// leaseAhead extends the sequence lease before the committer needs it, so
// that a commit seldom waits for the lease's fsyncs.
func (s *Spool) leaseAhead() {
	s.mu.Lock()
	next := s.next
	s.mu.Unlock()
	if err := s.ensureLease(next + leaseSize/2); err != nil {
		s.log.Warn("extend sequence lease", "err", err)
	}
}

// minCursor is the lowest cursor over the configured consumers: every
// event below it is done for all of them.
func (s *Spool) minCursor() uint64 {
	s.mu.Lock()
	low := s.next
	s.mu.Unlock()
	for _, c := range s.consumers {
		low = min(low, c.cursor.Load())
	}
	return low
}

// reclaim removes every generation whose events all consumers have passed,
// closes the unused ones, and asks for a new generation when the active one
// is fully delivered and old enough, or the spool is full, so its space
// comes back too: below a generation's size a full spool would otherwise
// refuse events for up to genMaxAge after its destinations caught up.
func (s *Spool) reclaim() {
	if len(s.consumers) == 0 {
		// Opened to work on dead letters (spillway dlq --spool-dir): who
		// still needs which events is unknown, so nothing is delivered.
		return
	}
	low := s.minCursor()
	s.genMu.Lock()
	gens := append([]*generation(nil), s.gens...)
	active := s.active
	s.genMu.Unlock()
	var removed []*generation
	for i, g := range gens {
		if g == active {
			break
		}
		if gens[i+1].first > low {
			g.closeIfUnused(s.log)
			continue
		}
		if err := g.remove(); err != nil {
			if !errors.Is(err, errGenerationBusy) {
				s.log.Error("remove delivered generation", "dir", g.dir, "err", err)
			}
			continue
		}
		removed = append(removed, g)
	}
	if len(removed) > 0 {
		s.forget(removed)
	}
	s.mu.Lock()
	next := s.next
	s.mu.Unlock()
	if low == next && next > active.first && (time.Since(active.created) >= genMaxAge || s.full()) {
		select {
		case s.rotate <- struct{}{}:
		default:
		}
	}
}

// forget drops removed generations from the list and their blocks from
// the gauge.
func (s *Spool) forget(removed []*generation) {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	kept := s.gens[:0]
	for _, g := range s.gens {
		gone := false
		for _, r := range removed {
			gone = gone || r == g
		}
		if gone {
			s.metrics.blocks.Sub(float64(g.blocks))
			continue
		}
		kept = append(kept, g)
	}
	clear(s.gens[len(kept):])
	s.gens = kept
}

// dropOldest makes room in a full spool by removing its oldest
// generation, undelivered or not, and counting what each consumer lost.
func (s *Spool) dropOldest() {
	s.genMu.Lock()
	if len(s.gens) < 2 {
		s.genMu.Unlock()
		select { // the active generation holds everything: cut it first
		case s.rotate <- struct{}{}:
		default:
		}
		return
	}
	g, end := s.gens[0], s.gens[1].first
	s.genMu.Unlock()
	if err := g.remove(); err != nil {
		if !errors.Is(err, errGenerationBusy) {
			s.log.Error("drop oldest generation", "dir", g.dir, "err", err)
		}
		return
	}
	dropped := map[string]uint64{}
	for _, c := range s.consumers {
		c.mu.Lock()
		if cursor := c.cursor.Load(); cursor < end {
			// Counted from the cursor, not from what the consumer has
			// read: the events it holds in flight lose their stored copy
			// here, so a stop before their delivery, or a failed one,
			// loses them. They may still arrive from memory, and be
			// counted both dropped and delivered; uncounted, they
			// vanished without a word.
			from := max(cursor, g.first)
			// Numbers a crash skipped were never events: not dropped.
			n := end - from - s.inHoles(from, end)
			dropped[c.name] = n
			s.dropEpisode[c.name] += n
			s.metrics.dropped.WithLabelValues(c.name, "spool_full").Add(float64(n))
			c.cursor.Store(end)
			c.pos = max(c.pos, end)
			c.cur = nil
		}
		c.mu.Unlock()
	}
	s.forget([]*generation{g})
	if !s.fullEpisode {
		s.fullEpisode = true
		s.log.Error("spool full: dropping the oldest undelivered events", "dropped", dropped, "max_bytes", s.cfg.MaxBytes)
	}
}

// refreshSize measures the spool directory and the free space on its file
// system, and sets the flags that Append and Ready consult.
func (s *Spool) refreshSize() {
	// Reset first: a block committed during the walk may then be counted
	// twice until the next one, never missed.
	s.writtenSince.Store(0)
	total := DiskUsage(s.cfg.Dir)
	s.measured.Store(total)
	s.metrics.bytes.Set(float64(total))
	over := s.cfg.MaxBytes > 0 && total >= s.cfg.MaxBytes
	if over != s.overMax.Swap(over) {
		switch {
		case over && s.cfg.WhenFull == Block:
			// Dead letters stay until an operator replays or purges
			// them: a store that fills the spool keeps it full however
			// well the destinations do, and says so here.
			dead := DiskUsage(metaDir(s.cfg.Dir))
			attrs := []any{"bytes", total, "max_bytes", s.cfg.MaxBytes, "dead_letter_bytes", dead}
			if dead >= total/2 {
				attrs = append(attrs, "hint", "most of the spool is dead letters, kept until replayed or purged: see spillway dlq")
			}
			s.log.Warn("spool full: refusing new events", attrs...)
		case !over:
			s.fullEpisode = false
			attrs := []any{"bytes", total, "max_bytes", s.cfg.MaxBytes}
			if len(s.dropEpisode) > 0 {
				attrs = append(attrs, "dropped", s.dropEpisode)
				s.dropEpisode = map[string]uint64{}
			}
			s.log.Info("spool has room again", attrs...)
		}
	}
	if free, err := freeBytes(s.cfg.Dir); err == nil {
		low := free < uint64(s.cfg.MinFreeBytes)
		if was := s.lowDisk.Swap(low); was && !low {
			s.log.Info("disk has room again: accepting events", "free_bytes", free)
		}
	}
}

// DiskUsage returns the bytes the files under dir occupy on disk. Badger
// sizes its value-log and memtable files ahead of use, sparsely, so their
// apparent sizes would overstate the spool severalfold.
func DiskUsage(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			} else {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// syncLoop makes SyncInterval writes durable in the background.
func (s *Spool) syncLoop() {
	tick := time.NewTicker(s.cfg.SyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
		start := time.Now()
		s.genMu.Lock()
		active := s.active
		s.genMu.Unlock()
		db, err := active.acquire(s.openGeneration)
		if err == nil {
			err = errors.Join(db.Sync(), s.meta.Sync())
			active.release()
		}
		if err != nil {
			s.log.Error("background fsync", "err", err)
			continue
		}
		s.metrics.fsync.Observe(time.Since(start).Seconds())
	}
}
