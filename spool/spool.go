package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// recentCacheBytes bounds the freshly written blocks kept in memory, as
// stored (compressed), so destinations that keep up never read back
// through Badger. Kept decoded, 16 MiB of them were a third of the live
// heap; compressed, 1 MiB covers about 5 MiB of events, 25 ms at full
// load, and a CPU profile at W1 shows no block read back from disk. A hit
// costs one decompression; the newest block is also kept uncompressed
// (Spool.hot), which gave 8% more throughput at W1.
const recentCacheBytes = 1 << 20

// Spool is the durable event log. Its methods are safe for concurrent use;
// Read, Ack and Rewind for one consumer are meant to be called from that
// consumer's single delivery loop.
//
// Goroutines: writeLoop takes filling groups and seals them; commitLoop
// alone writes the active generation and replaces it; maintenanceLoop
// saves cursors, reclaims, drops, measures and opens the spare; syncLoop
// (--sync=interval) fsyncs. Locks, outermost first; none is taken while a
// later one in this list is held, except as the arrows say:
//
//	consumer.mu -> Spool.mu, genMu, quarantineMu, generation.mu
//	quarantineMu -> generation.mu, fillMu (its dead letter is stored
//	through the writer, which never takes quarantineMu)
//	genMu -> generation.mu
//	fillMu (with fillTaken), leaseMu, deadMu: nothing taken under them
//
// quarantineMu and genMu are never held together. docs/architecture.md
// draws the whole path.
type Spool struct {
	cfg     Config
	meta    *badger.DB // cursors, read marks, quarantine marks, lanes
	dirLock *os.File   // held from Open to Close: one process per spool
	log     *slog.Logger
	metrics *metrics

	kick        chan struct{} // tells the writer a group is filling
	sealed      chan *sealedGroup
	committed   chan struct{} // the committer has finished what it was handed
	rotate      chan struct{} // asks the writer to start a new generation
	spareTaken  chan struct{} // tells the maintenance loop the writer moved to the spare
	acked       chan struct{} // tells the maintenance loop a cursor moved
	deadWritten chan struct{} // tells the maintenance loop dead letters were stored
	logPagesDue chan struct{} // tells it releaseLogEveryBytes were committed
	unsynced    chan struct{} // tells syncLoop meta was written
	quit        chan struct{}
	wg          sync.WaitGroup

	closing atomic.Bool
	overMax atomic.Bool // beyond MaxBytes when last measured
	// measured is the spool's disk usage when last measured, and
	// writtenSince the block bytes committed since: the disk is walked
	// once a second, in which a burst may write far more than the room
	// left under MaxBytes.
	measured, writtenSince atomic.Int64
	lowDisk                atomic.Bool // the file system is below MinFreeBytes
	closeOnce              sync.Once
	closeErr               error

	nextDead atomic.Uint64
	// maintenancePasses counts the maintenance loop's passes: an idle
	// spool makes none.
	maintenancePasses atomic.Int64
	// releases and rests count the idle hand-backs of memory and of the
	// program's pages: once each per quiet spell.
	releases, rests atomic.Int64
	// metaTables is meta's tree as compactMeta last released its pages:
	// the maintenance loop's alone.
	metaTables metaTreeShape
	// deadMu guards the dead-letter store.
	deadMu sync.Mutex
	dead   *deadLog

	dedupe *dedupeIndex // the messageId index; its methods lock it

	// leased is the durable lease on sequence numbers (numbering.go);
	// leaseMu serialises its writes.
	leaseMu sync.Mutex
	leased  atomic.Uint64
	// holes are the numbers below the next one at Open that no stored
	// block holds: before the oldest generation, between generations, and
	// up to the lease after a crash. Not backlog. Set by recover only.
	holes []numberingGap

	genMu   sync.Mutex
	gens    []*generation // oldest first; the last one is the writer's
	active  *generation   // only the committer replaces it
	spare   *generation   // opened ahead, for the committer to move to
	nextGen uint64        // number of the next generation created
	removed uint64        // generations removed since Open
	// activeBytes is what the writer has put in the active generation.
	activeBytes int64
	// logUnreleased is what the writer has put in value logs since their
	// pages were last released; the writer's alone.
	logUnreleased int64

	fillMu     sync.Mutex
	fillTaken  *sync.Cond // signalled when the writer takes the filling group
	fill       filling
	fillClosed bool   // the writer has stopped: Submit answers ErrClosed
	fillFull   bool   // a submitter waits for the filling group to be taken
	assigned   uint64 // the number the next submitted event gets
	fillGroup  uint64 // the filling group's number, from 1

	mu        sync.Mutex
	next      uint64        // sequence number of the next event appended
	changed   chan struct{} // closed at the next commit
	recent    []recentBlock // newest last, contiguous up to next
	recentLen int           // bytes held by recent
	hot       hotBlock      // the newest block, uncompressed

	consumers map[string]*consumer // never written after Open

	quarantineMu sync.Mutex
	quarantined  map[uint64]bool // first seqs of quarantined blocks
	// Maintenance loop only: a drop-oldest episode is logged when it
	// starts, and what it dropped in all when the spool has room again.
	fullEpisode bool
	dropEpisode map[string]uint64
}

type consumer struct {
	name   string
	mu     sync.Mutex
	pos    uint64 // next seq Read returns; only the consumer's loop moves it
	cursor atomic.Uint64
	saved  atomic.Uint64 // the cursor as last written to disk
	// savedRead is the read mark as last written to disk: after a crash,
	// what lies between the saved cursor and it may have been read and
	// delivered, and is sent again. While running it is a lease, at or
	// ahead of pos (ReadInto extends it before it returns events past it),
	// so that a crash never sends again more than it counts; Close writes
	// pos itself.
	savedRead atomic.Uint64
	cur       *decodedBlock // the block Read is in: nil or &block
	block     decodedBlock  // memory every block this consumer reads is decoded into
	// onDisk is the finished generation this consumer last read a block
	// from; it is closed once the consumer leaves it (see leaveGeneration).
	onDisk *generation
}

// Open opens or creates the spool in cfg.Dir, recovering after a crash
// whatever was durable. A nil logger discards; a nil reg registers nowhere.
func Open(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Spool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.MinFreeBytes == 0 {
		cfg.MinFreeBytes = DefaultMinFreeBytes
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "spool")
	if err := createDir(cfg.Dir); err != nil {
		return nil, fmt.Errorf("create spool dir: %w", err)
	}
	s := &Spool{
		cfg:         cfg,
		log:         logger,
		kick:        make(chan struct{}, 1),
		sealed:      make(chan *sealedGroup),
		committed:   make(chan struct{}, 1),
		rotate:      make(chan struct{}, 1),
		spareTaken:  make(chan struct{}, 1),
		acked:       make(chan struct{}, 1),
		deadWritten: make(chan struct{}, 1),
		logPagesDue: make(chan struct{}, 1),
		unsynced:    make(chan struct{}, 1),
		quit:        make(chan struct{}),
		changed:     make(chan struct{}),
		consumers:   make(map[string]*consumer, len(cfg.Consumers)),
		dropEpisode: map[string]uint64{},
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	s.dirLock = lock
	if err := s.open(reg); err != nil {
		unlockDir(lock)
		return nil, err
	}
	s.countResent()
	s.refreshSize()
	s.fillTaken = sync.NewCond(&s.fillMu)
	s.assigned = s.next
	s.fillGroup = 1
	// Read before the maintenance loop starts reclaiming.
	gens, next := len(s.gens), s.next
	s.spawn(s.writeLoop)
	s.spawn(s.commitLoop)
	s.spawn(s.maintenanceLoop)
	if cfg.Sync == SyncInterval {
		s.spawn(s.syncLoop)
	}
	logger.Info("spool open", "dir", cfg.Dir, "sync", cfg.Sync.String(), "generations", gens, "next_seq", next)
	return s, nil
}

// open recovers the spool in its locked directory. What it opened before
// a failure it closes.
func (s *Spool) open(reg prometheus.Registerer) error {
	if err := errors.Join(sweepRemovals(s.cfg.Dir), sweepTemporary(s.cfg.Dir)); err != nil {
		return err
	}
	found, err := listGenerations(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("list generations: %w", err)
	}
	// The writer always starts in a new generation: it is created while
	// meta opens and the others are scanned. Each Badger open is a dozen
	// fsyncs or more, on an empty spool most of the time to ready.
	ahead := s.createAhead(found)
	meta, err := s.openMeta()
	if err != nil {
		ahead.discard()
		return fmt.Errorf("open spool %s: %w", s.cfg.Dir, err)
	}
	s.meta = meta
	fail := func(err error) error {
		s.closeGenerations()
		_ = meta.Close()
		return err
	}
	err = s.recover(found, ahead)
	if err != nil {
		ahead.discard()
		return fail(err)
	}
	if s.dedupe, err = s.openDedupe(reg); err != nil {
		return fail(err)
	}
	s.metrics = newMetrics(reg, s)
	if err := s.openDeadLetters(); err != nil {
		return fail(fmt.Errorf("open spool %s: dead letters: %w", s.cfg.Dir, err))
	}
	return nil
}

// countResent counts, for each consumer, the stored events between its
// saved cursor and its read mark: at-least-once sends them again.
// Numbers no block holds (skipped after a crash) are not events.
func (s *Spool) countResent() {
	for _, c := range s.consumers {
		saved, read := c.saved.Load(), c.savedRead.Load()
		if n := read - saved - s.inHoles(saved, read); n > 0 {
			s.metrics.resent.WithLabelValues(c.name).Add(float64(n))
			s.log.Info("events that may have been read before the stop and not acknowledged will be sent again",
				"destination", c.name, "events", n)
		}
	}
}

// metaDir is the spool's database of cursors, read marks, quarantine
// marks, lanes and pending ranges (FORMAT.md), the first thing Open
// creates.
func metaDir(spoolDir string) string { return filepath.Join(spoolDir, "meta") }

// Exists reports whether dir holds a spool: its meta database with the
// MANIFEST Badger writes as it opens one, so that an empty meta/ of some
// other program does not pass for a spool.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(metaDir(dir), "MANIFEST"))
	return err == nil
}

func (s *Spool) spawn(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// Ready is nil while Append accepts events.
func (s *Spool) Ready() error {
	if s.closing.Load() {
		return ErrClosed
	}
	if s.lowDisk.Load() || (s.cfg.WhenFull == Block && s.full()) {
		return ErrFull
	}
	return nil
}

// full reports whether the spool is at MaxBytes, counting what was
// committed since it was last measured.
func (s *Spool) full() bool {
	return s.overMax.Load() ||
		s.cfg.MaxBytes > 0 && s.measured.Load()+s.writtenSince.Load() >= s.cfg.MaxBytes
}

// Changed returns a channel closed at the next commit of events.
func (s *Spool) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Close stops accepting events, commits those already handed to the
// writer, saves every cursor and closes the databases. It may be called
// more than once and returns the first call's error.
//
// If ctx ends first, Close stops waiting and returns an error, leaving the
// rest to the process's exit. On a disk that no longer takes writes (failed,
// remounted read-only, its directory removed) closing would never end:
// Badger retries a failed memtable flush forever. Exiting without the close
// is no worse than a crash, which the spool recovers from on the next start.
func (s *Spool) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		close(s.quit)
		closed := make(chan error, 1)
		go func() { closed <- s.closeAll() }()
		select {
		case s.closeErr = <-closed:
			s.log.Info("spool closed")
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("spool not closed cleanly: %w; the next start recovers it", context.Cause(ctx))
			s.log.Error("spool close did not finish: its writes or its databases are stuck; leaving them to the process's exit", "err", context.Cause(ctx))
		}
	})
	return s.closeErr
}

// closeAll does Close's work once the writer and the background work have
// stopped: Badger must never be closed under a running writer.
func (s *Spool) closeAll() error {
	s.wg.Wait()
	cursorsErr := s.saveCursors(true)
	// Every number below next is stored: a clean restart need skip none.
	s.mu.Lock()
	next := s.next
	s.mu.Unlock()
	leaseErr := writeLease(s.cfg.Dir, next)
	generationsErr := s.closeGenerations()
	var spareErr error
	if s.spare != nil {
		// Never written: remove it rather than leave an empty database.
		spareErr = s.spare.remove()
	}
	s.deadMu.Lock()
	deadErr := s.dead.close()
	s.deadMu.Unlock()
	metaErr := s.meta.Close()
	if metaErr != nil {
		metaErr = fmt.Errorf("close spool meta: %w", metaErr)
	}
	unlockDir(s.dirLock)
	return errors.Join(cursorsErr, leaseErr, generationsErr, spareErr, deadErr, metaErr)
}

func (s *Spool) consumer(name string) (*consumer, error) {
	c, ok := s.consumers[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownConsumer, name)
	}
	return c, nil
}

// Backlog returns how much consumer has not acknowledged.
func (s *Spool) Backlog(consumer string) Backlog {
	c, err := s.consumer(consumer)
	if err != nil {
		return Backlog{}
	}
	cursor := c.cursor.Load()
	s.mu.Lock()
	next := s.next
	var oldest time.Time
	if i := s.recentIndex(cursor); i >= 0 {
		oldest = s.recent[i].meta.stored
	}
	s.mu.Unlock()
	if cursor >= next {
		return Backlog{}
	}
	if oldest.IsZero() && !s.closing.Load() {
		if _, m, ok, _ := s.blockAtOrAfter(cursor); ok {
			oldest = m.stored
		}
	}
	return Backlog{Events: int64(next - cursor - s.inHoles(cursor, next)), Oldest: oldest}
}
