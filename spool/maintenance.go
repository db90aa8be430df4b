package spool

import (
	"errors"
	badger "github.com/dgraph-io/badger/v4"
	"io/fs"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"
)

// maintenanceEvery is the shortest time between two maintenance passes
// while events come in or cursors move; idleRelease is how long the spool
// must have been quiet before the memory of its last burst is handed back
// to the operating system, and idleRest before what the next event would
// pay to have again is too (see rest): its answer takes 8-10 ms instead of
// 2-3, which a sidecar seeing an event every few seconds should not pay
// each time.
const (
	maintenanceEvery = time.Second
	idleRelease      = 5 * time.Second
	idleRest         = 30 * time.Second
)

// maintenanceLoop saves cursors, removes generations every consumer has
// passed, closes unused ones, opens the spare, and keeps the size
// accounting that --spool-max-bytes and the free-space reserve need.
//
// It sleeps until there is work: a commit, an acknowledgement, a rotation,
// or a deadline that is actually due (the active generation's age, a full
// spool or disk that may have room again). A sidecar idles beside every
// replica of a service, so a quiet spool must cost no CPU and touch no
// disk: on tickers it woke hundreds of times a second to find nothing to
// do. Under load a pass still runs at most every maintenanceEvery and a
// cursor save within cursorSaveEvery of the acknowledgement.
func (s *Spool) maintenanceLoop() {
	save := newStoppedTimer()
	defer save.Stop()
	pass := newStoppedTimer()
	defer pass.Stop()
	release := newStoppedTimer()
	defer release.Stop()
	rest := newStoppedTimer()
	defer rest.Stop()
	var (
		saveArmed bool
		passAt    time.Time // zero: no pass scheduled
		lastPass  time.Time
	)
	// schedule makes sure a pass runs by at, and no sooner than
	// maintenanceEvery after the last one.
	schedule := func(at time.Time) {
		at = later(at, lastPass.Add(maintenanceEvery))
		if !passAt.IsZero() && !passAt.After(at) {
			return
		}
		passAt = at
		pass.Reset(time.Until(at))
	}
	// seen is where numbering stood at the last sign of activity: commits
	// go unnoticed while a pass is scheduled.
	var seen uint64
	quietAgain := func() {
		release.Reset(idleRelease)
		rest.Reset(idleRest)
	}
	active := func() {
		schedule(time.Now())
		quietAgain()
		seen = s.nextSeq()
	}
	// stillBusy reports whether the spool was active since seen, and if so
	// waits for quiet again.
	stillBusy := func() bool {
		if next := s.nextSeq(); next != seen || saveArmed {
			seen = next
			quietAgain()
			return true
		}
		return false
	}
	changed := s.Changed()
	schedule(time.Now()) // what recover left: the lease, the spare, the size
	rest.Reset(idleRest) // what start-up touched
	for {
		// A pass already due covers every commit until it runs, unless the
		// writer has moved to its spare: the next one is opened at the
		// first commit into the new active generation, which at full load
		// fills in a fraction of the time to that pass. A pass set for the
		// active generation's age deadline is not due: the commits until
		// then must be measured, or a filling spool would neither refuse
		// nor drop, and a full disk go unnoticed, for up to genMaxAge.
		var changedC <-chan struct{}
		if passAt.IsZero() || s.spareMissing() || time.Until(passAt) > maintenanceEvery {
			changedC = changed
		}
		// An armed save covers every acknowledgement until it fires.
		var ackedC <-chan struct{}
		if !saveArmed {
			ackedC = s.acked
		}
		select {
		case <-s.quit:
			return
		case <-changedC:
			changed = s.Changed()
			if s.wantSpare() {
				// At full load a generation fills in a fraction of a
				// second: the spare must be ready before the writer needs
				// it, or it opens one itself, stalling commits.
				s.prepareSpare()
			}
			active()
		case <-s.deadWritten:
			active()
		case <-s.logPagesDue:
			s.releaseLogPages()
		case <-ackedC:
			save.Reset(cursorSaveEvery)
			saveArmed = true
			active()
		case <-save.C:
			saveArmed = false
			if err := s.saveCursors(false); err != nil {
				s.log.Error("save cursors", "err", err)
			}
		case <-s.spareTaken:
			// The old generation may be reclaimable now.
			schedule(time.Now())
		case <-release.C:
			if !stillBusy() {
				s.releases.Add(1)
				s.releaseMemory()
			}
		case <-rest.C:
			if !stillBusy() {
				s.rests.Add(1)
				s.rest()
			}
		case <-pass.C:
			lastPass = time.Now()
			passAt = time.Time{}
			s.maintenancePasses.Add(1)
			removed := s.generationsRemoved()
			if next := s.maintain(lastPass); !next.IsZero() {
				schedule(next)
			}
			if s.generationsRemoved() != removed {
				// What closing a generation freed is handed back once
				// quiet again: a burst's last generation is rotated out
				// genMaxAge after it, long after the burst's own release.
				quietAgain()
			}
		}
	}
}

// maintain is one maintenance pass. It returns when the next one is due
// even if nothing happens meanwhile, or zero when only new work (a
// commit, an acknowledgement) can make one useful.
func (s *Spool) maintain(now time.Time) time.Time {
	busy := s.reclaim()
	if s.wantSpare() {
		s.prepareSpare()
	}
	s.leaseAhead()
	s.refreshSize()
	if s.cfg.WhenFull == DropOldest && s.full() {
		s.dropOldest()
	}
	s.compactMeta()
	// Room may come back from outside (another program freeing disk) or
	// from a removal that found a reader in the generation: look again.
	if busy || s.full() || s.lowDisk.Load() {
		return now.Add(maintenanceEvery)
	}
	// A generation holding events is rotated once genMaxAge old and
	// delivered, so that its space comes back; delivery is an
	// acknowledgement, which wakes the loop, but the age is a deadline.
	s.genMu.Lock()
	g := s.active
	s.genMu.Unlock()
	if s.activeHoldsEvents() {
		if due := g.startedAt().Add(genMaxAge); due.After(now) {
			return due
		}
	}
	return time.Time{}
}

// noteDeadWrite tells the maintenance loop that dead letters were stored:
// they take room under --spool-max-bytes too.
func (s *Spool) noteDeadWrite() {
	select {
	case s.deadWritten <- struct{}{}:
	default:
	}
}

// activeHoldsEvents reports whether the writer has committed events to the
// active generation.
func (s *Spool) activeHoldsEvents() bool {
	s.genMu.Lock()
	first := s.active.first
	s.genMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next > first
}

// wantSpare reports whether the writer will soon need a generation to move
// to: one is opened once the active generation receives its first events,
// not ahead of them, so that an idle spool keeps two databases open, not
// three.
func (s *Spool) wantSpare() bool {
	return s.spareMissing() && s.activeHoldsEvents()
}

func (s *Spool) spareMissing() bool {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	return s.spare == nil
}

// releaseMemory hands the memory of the last burst back to the operating
// system once the spool has been quiet for idleRelease. The runtime
// returns freed memory over minutes by itself; a sidecar idles most of the
// time, and its RSS is what the pod is charged for.
func (s *Spool) releaseMemory() {
	s.dropIdleBuffers()
	// Two collections: the first moves what sync.Pools hold (coders,
	// request and batch buffers) to their victim caches, the second,
	// FreeOSMemory's own, frees it.
	runtime.GC()
	debug.FreeOSMemory()
}

// rest hands back, once the spool has been quiet for idleRest, what a
// short pause keeps because the next event would pay to have it again:
// the last coder of each kind (1.4 MiB; making an encoder with its
// dictionary takes 1.3-2.2 ms) and the pages of the program itself.
func (s *Spool) rest() {
	encoders.drain()
	decoders.drain()
	debug.FreeOSMemory()
	// Last: the collection maps again the runtime's tables of the code
	// on every stack.
	s.releaseProgramPages()
}

// dropIdleBuffers lets go of the memory that serves a spool under load
// and nothing once its destinations have caught up: the block bodies the
// writer recycles (about 1 MiB each, the dead letters' too), the recent cache and the newest
// block uncompressed once every reader has passed them, the block each
// caught-up reader decoded last, and the coders beyond one of each
// (about 1.3 MiB an encoder): one stays, since making one costs the first
// event after a quiet spell, and a burst leaves one per core.
func (s *Spool) dropIdleBuffers() {
	scratchBuffers.drain()
	deadBuffers.drain()
	s.dedupe.dropSpare()
	encoders.trim(1)
	decoders.trim(1)
	next := s.nextSeq()
	for _, c := range s.consumers {
		c.mu.Lock()
		if c.pos == next {
			c.cur = nil
			c.block = decodedBlock{}
		}
		c.mu.Unlock()
	}
	if s.minCursor() < next {
		return
	}
	s.mu.Lock()
	if s.next == next { // no commit since: nobody can want these yet
		s.recent, s.recentLen = nil, 0
		s.hot = hotBlock{} // readers copy it under s.mu only
	}
	s.mu.Unlock()
}

func (s *Spool) generationsRemoved() uint64 {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	return s.removed
}

func (s *Spool) nextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// metaMaxL0Tables is how many tables meta's level 0 may hold before the
// maintenance loop compacts it. Badger's compactors are off (see
// badgerOptions); meta is the database that lives for ever, each memtable
// flush adds a table, and every read looks through all of them.
const metaMaxL0Tables = 4

// compactMeta compacts meta's tree once its level 0 has grown, and
// releases the pages of the tables written since its last pass.
func (s *Spool) compactMeta() {
	levels := s.meta.Levels()
	if len(levels) > 0 && levels[0].NumTables >= metaMaxL0Tables {
		if err := s.meta.Flatten(1); err != nil {
			s.log.Warn("compact meta", "err", err)
		}
		levels = s.meta.Levels()
	}
	// Badger writes a table through its mapping, so every page of a new
	// one is resident: when dead letters lived in meta, its new tables
	// alone took spillway 25 MiB over its bound at full load (a blocking
	// tracking plan), and the Go heap, squeezed under the same limit,
	// spent its time collecting. Lanes' parked events still grow it.
	if shape := shapeOf(levels); shape != s.metaTables {
		s.metaTables = shape
		s.releaseTablePages()
	}
}

// metaTreeShape tells two states of meta's tree apart well enough to
// see that a table was added or replaced.
type metaTreeShape struct{ tables, bytes int64 }

func shapeOf(levels []badger.LevelInfo) metaTreeShape {
	var t metaTreeShape
	for _, l := range levels {
		t.tables += int64(l.NumTables)
		t.bytes += l.Size
	}
	return t
}

func newStoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
func (s *Spool) reclaim() (busy bool) {
	if len(s.consumers) == 0 {
		// Opened to work on dead letters (spillway dlq --spool-dir): who
		// still needs which events is unknown, so nothing is delivered.
		return false
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
			busy = true
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
	if low == next && next > active.first && (time.Since(active.startedAt()) >= genMaxAge || s.full()) {
		select {
		case s.rotate <- struct{}{}:
		default:
		}
	}
	return busy
}

// forget drops removed generations from the list and their blocks from
// the gauge.
func (s *Spool) forget(removed []*generation) {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	s.removed += uint64(len(removed))
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
			dead := DiskUsage(deadDir(s.cfg.Dir))
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

// syncLoop makes SyncInterval writes durable in the background, within
// SyncInterval of the first write not yet synced. It sleeps while
// everything written is synced: on a ticker an idle spool woke 20 times a
// second to sync nothing.
func (s *Spool) syncLoop() {
	due := newStoppedTimer()
	defer due.Stop()
	armed := false
	changed := s.Changed()
	for {
		// An armed sync covers every write until it runs.
		var changedC, unsyncedC <-chan struct{}
		if !armed {
			changedC, unsyncedC = changed, s.unsynced
		}
		select {
		case <-s.quit:
			return
		case <-changedC:
			due.Reset(s.cfg.SyncInterval)
			armed = true
		case <-unsyncedC:
			due.Reset(s.cfg.SyncInterval)
			armed = true
		case <-due.C:
			armed = false
			// Taken before the sync, which covers every write so far:
			// only those after it arm the next one.
			changed = s.Changed()
			select {
			case <-s.unsynced:
			default:
			}
			s.syncActive()
		}
	}
}

// noteUnsynced tells syncLoop that meta was written. Commits of events
// tell it through Changed.
func (s *Spool) noteUnsynced() {
	select {
	case s.unsynced <- struct{}{}:
	default:
	}
}

// syncActive fsyncs the active generation, meta and the dead letters.
func (s *Spool) syncActive() {
	start := time.Now()
	s.genMu.Lock()
	active := s.active
	s.genMu.Unlock()
	db, err := active.acquire(s.openGeneration)
	if err == nil {
		s.deadMu.Lock()
		deadErr := s.dead.sync()
		s.deadMu.Unlock()
		err = errors.Join(db.Sync(), s.meta.Sync(), deadErr)
		active.release()
	}
	if err != nil {
		s.log.Error("background fsync", "err", err)
		return
	}
	s.metrics.fsync.Observe(time.Since(start).Seconds())
}
