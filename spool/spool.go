package spool

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/prometheus/client_golang/prometheus"
)

// SyncMode says when an Append counts as durable.
type SyncMode int

const (
	// SyncAlways fsyncs every block before Append returns: an acknowledged
	// event survives a power cut.
	SyncAlways SyncMode = iota
	// SyncInterval returns once the block is written to the operating
	// system and fsyncs in the background every SyncInterval: an
	// acknowledged event survives a crash of the process, not of the machine.
	SyncInterval
)

// String returns the flag spelling of m.
func (m SyncMode) String() string {
	if m == SyncInterval {
		return "interval"
	}
	return "always"
}

// ParseSyncMode reads the flag spelling of a SyncMode.
func ParseSyncMode(s string) (SyncMode, error) {
	switch s {
	case "always":
		return SyncAlways, nil
	case "interval":
		return SyncInterval, nil
	}
	return 0, fmt.Errorf("unknown sync mode %q (want always or interval)", s)
}

// WhenFull says what a full spool does with new events.
type WhenFull int

const (
	// Block answers new events with ErrFull until space returns.
	Block WhenFull = iota
	// DropOldest drops the oldest undelivered generation to make room,
	// counting every dropped event per destination.
	DropOldest
)

// ParseWhenFull reads the flag spelling of a WhenFull.
func ParseWhenFull(s string) (WhenFull, error) {
	switch s {
	case "block":
		return Block, nil
	case "drop-oldest":
		return DropOldest, nil
	}
	return 0, fmt.Errorf("unknown policy %q (want block or drop-oldest)", s)
}

// Defaults for Config.
const (
	DefaultDir          = "./spillway-data"
	DefaultSyncInterval = 50 * time.Millisecond
	DefaultMaxBytes     = 1 << 30
	// DefaultMinFreeBytes keeps room on the file system for what Badger
	// may still write into files it has already sized: it writes through
	// mmap, where a full disk is a SIGBUS, not an error.
	DefaultMinFreeBytes = 48 << 20
)

// maxBlockBytes bounds how much event data one group commit gathers: large
// enough to amortise an fsync over many requests, small enough that one
// block decodes quickly and stays far below Badger's value size limit.
const maxBlockBytes = 1 << 20

// recentCacheBytes bounds the freshly written blocks kept in memory, as
// stored (compressed), so destinations that keep up never read back
// through Badger. Kept decoded, 16 MiB of them were a third of the live
// heap; compressed, 1 MiB covers about 5 MiB of events, 25 ms at full
// load, and a CPU profile at W1 shows no block read back from disk. A hit
// costs one decompression; the newest block is also kept uncompressed
// (Spool.hot), which gave 8% more throughput at W1.
const recentCacheBytes = 1 << 20

// Generation sizing: a generation is rotated once it holds genMaxBytes of
// blocks or is genMaxAge old, so that a drained backlog gives its space
// back within about a minute. What is written to the active generation's
// mmapped value log stays resident until it is closed, so its size is
// part of peak RSS; each costs about 20 KiB of disk besides its blocks.
const (
	genMaxBytes = 4 << 20
	genMaxAge   = time.Minute
)

// Config configures a Spool.
type Config struct {
	// Dir is the spool directory, created 0700 if missing.
	Dir string
	// Sync is the durability of an acknowledged Append. Zero is SyncAlways.
	Sync SyncMode
	// SyncInterval is how often SyncInterval mode fsyncs. Zero means
	// DefaultSyncInterval.
	SyncInterval time.Duration
	// MaxBytes bounds the spool's size on disk. Zero means no bound.
	MaxBytes int64
	// WhenFull is what happens beyond MaxBytes. Zero is Block.
	WhenFull WhenFull
	// MinFreeBytes is the free space the file system must keep; below it
	// Append answers ErrFull. Zero means DefaultMinFreeBytes.
	MinFreeBytes int64
	// Consumers names every destination; each has a durable cursor.
	Consumers []string
}

// Validate reports the first invalid field, named by its flag.
func (c *Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("--spool-dir must not be empty")
	case c.Sync != SyncAlways && c.Sync != SyncInterval:
		return errors.New("--sync must be always or interval")
	case c.SyncInterval < 0:
		return errors.New("--sync-interval must be >= 0")
	case c.MaxBytes < 0:
		return errors.New("--spool-max-bytes must be >= 0")
	case c.WhenFull != Block && c.WhenFull != DropOldest:
		return errors.New("--when-full must be block or drop-oldest")
	case c.MinFreeBytes < 0:
		return errors.New("min free bytes must be >= 0")
	}
	seen := make(map[string]bool, len(c.Consumers))
	for _, name := range c.Consumers {
		if name == "" || seen[name] {
			return fmt.Errorf("consumer name %q is empty or repeated", name)
		}
		seen[name] = true
	}
	return nil
}

// Spool is the durable event log. Its methods are safe for concurrent use;
// Read, Ack and Rewind for one consumer are meant to be called from that
// consumer's single delivery loop.
type Spool struct {
	cfg     Config
	meta    *badger.DB // cursors and dead letters
	log     *slog.Logger
	metrics *metrics

	kick       chan struct{} // tells the writer a group is filling
	sealed     chan *sealedGroup
	committed  chan struct{} // the committer has finished what it was handed
	rotate     chan struct{} // asks the writer to start a new generation
	spareTaken chan struct{} // tells the maintenance loop to open a new spare
	quit       chan struct{}
	wg         sync.WaitGroup

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

	// leased is the durable lease on sequence numbers (numbering.go);
	// leaseMu serialises its writes.
	leaseMu sync.Mutex
	leased  atomic.Uint64
	// gap is where numbering jumped to the lease after a crash.
	gap numberingGap

	genMu   sync.Mutex
	gens    []*generation // oldest first; the last one is the writer's
	active  *generation   // only the committer replaces it
	spare   *generation   // opened ahead, for the committer to move to
	nextGen uint64        // number of the next generation created
	// activeBytes is what the writer has put in the active generation.
	activeBytes int64

	fillMu     sync.Mutex
	fillTaken  *sync.Cond // signalled when the writer takes the filling group
	fill       filling
	fillClosed bool   // the writer has stopped: Submit answers ErrClosed
	fillFull   bool   // a submitter waits for the filling group to be taken
	assigned   uint64 // the number the next submitted event gets

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
	// savedRead is pos as last written to disk: after a crash, what lies
	// between the saved cursor and it was read, maybe delivered, and is
	// sent again.
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
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
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
		quit:        make(chan struct{}),
		changed:     make(chan struct{}),
		consumers:   make(map[string]*consumer, len(cfg.Consumers)),
		dropEpisode: map[string]uint64{},
	}
	// Dead letters live in meta's LSM tree (below the value threshold);
	// Badger caps a transaction at 15% of the memtable, so a larger one
	// than a generation's means fewer commits for a batch of them.
	if err := clearUnsizedLogs(metaDir(cfg.Dir), logger); err != nil {
		return nil, fmt.Errorf("open spool %s: meta: %w", cfg.Dir, err)
	}
	if err := checkDamage(metaDir(cfg.Dir)); err != nil {
		return nil, fmt.Errorf("open spool %s: meta: %w", cfg.Dir, err)
	}
	meta, err := badger.Open(s.badgerOptions(metaDir(cfg.Dir)).
		WithValueThreshold(64 << 10).WithValueLogFileSize(4 << 20).WithMemTableSize(1 << 20).
		WithBaseTableSize(2 << 20))
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", cfg.Dir, err)
	}
	s.meta = meta
	// Badger creates its log files without syncing their directory: a
	// power cut could take the files, with everything synced into them.
	if err := syncDir(metaDir(cfg.Dir)); err != nil {
		_ = meta.Close()
		return nil, fmt.Errorf("open spool %s: %w", cfg.Dir, err)
	}
	if err := s.recover(); err != nil {
		s.closeGenerations()
		_ = meta.Close()
		return nil, err
	}
	s.metrics = newMetrics(reg, s)
	for _, c := range s.consumers {
		// What the consumer had read past its cursor when last saved:
		// at-least-once sends it again.
		if n := c.savedRead.Load() - c.saved.Load(); n > 0 {
			s.metrics.resent.WithLabelValues(c.name).Add(float64(n))
			logger.Info("events read before the stop and not acknowledged will be sent again",
				"destination", c.name, "events", n)
		}
	}
	s.refreshSize()
	s.fillTaken = sync.NewCond(&s.fillMu)
	s.assigned = s.next
	s.spawn(s.writeLoop)
	s.spawn(s.commitLoop)
	s.spawn(s.maintenanceLoop)
	if cfg.Sync == SyncInterval {
		s.spawn(s.syncLoop)
	}
	logger.Info("spool open", "dir", cfg.Dir, "sync", cfg.Sync.String(), "generations", len(s.gens), "next_seq", s.next)
	return s, nil
}

// metaDir is the spool's database of cursors, read marks and dead letters
// (FORMAT.md), the first thing Open creates.
func metaDir(spoolDir string) string { return filepath.Join(spoolDir, "meta") }

// Exists reports whether dir holds a spool: its meta database with the
// MANIFEST Badger writes as it opens one, so that an empty meta/ of some
// other program does not pass for a spool.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(metaDir(dir), "MANIFEST"))
	return err == nil
}

// readPositions reads the sequence numbers stored under prefix, by
// consumer name.
func readPositions(txn *badger.Txn, prefix byte, what string, into map[string]uint64) error {
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

func (s *Spool) badgerOptions(dir string) badger.Options {
	return badger.DefaultOptions(dir).
		// Not WithLoggingLevel: it replaces the logger with Badger's own,
		// which writes plain text to stderr past --log-format json.
		WithLogger(badgerLogger{s.log}).
		// One fsync per transaction, and we commit one transaction per
		// group: this is what makes an acknowledged block durable. db.Sync
		// alone would miss value-log and memtable files just rotated out.
		WithSyncWrites(s.cfg.Sync == SyncAlways).
		WithMetricsEnabled(false).
		WithDetectConflicts(false).
		// Blocks go to the value log: kept in the LSM tree their
		// compaction would cost more than a core.
		WithValueThreshold(1 << 10).
		// Values are zstd blocks already; keys are tiny.
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		// A sidecar lives under a memory limit: memtables and value-log
		// files are mmapped, so what is written to them counts toward RSS.
		// Keys and value pointers are all a memtable holds (values go to
		// the value log), so a small one lasts for thousands of blocks.
		// Three generations are often open at once (active, spare, one
		// being drained): 256 KiB each instead of 1 MiB saves 4 MiB of heap.
		WithMemTableSize(256 << 10).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		// A memtable flush builds its table in a buffer of twice this:
		// a generation's tables hold only keys, a few KiB.
		WithBaseTableSize(256 << 10).
		WithValueLogFileSize(genMaxBytes + maxBlockBytes).
		WithNumCompactors(2).
		WithNumGoroutines(2).
		// A table holding a damaged key would list blocks that are not
		// there, or hide those that are: checked whole when opened, a
		// damaged table stops the open instead (it holds keys only, a
		// few KiB, so the check is cheap).
		WithChecksumVerificationMode(options.OnTableRead)
}

func (s *Spool) openGeneration(dir string) (*badger.DB, error) {
	db, err := badger.Open(s.badgerOptions(dir))
	if err != nil {
		return nil, fmt.Errorf("open generation %s: %w", filepath.Base(dir), err)
	}
	return db, nil
}

// openFinished opens a generation the writer has left, read-only. Opened
// for writing, Badger would truncate its newest value-log file at the
// first damaged entry, losing the intact blocks behind it; read-only, a
// damaged block fails its own checksum and is quarantined alone.
func (s *Spool) openFinished(dir string) (*badger.DB, error) {
	// Badger checks a value's own checksum before decoding its header, so
	// damage is an error here rather than a panic inside Badger.
	db, err := badger.Open(s.badgerOptions(dir).WithReadOnly(true).WithVerifyValueChecksum(true))
	if err != nil {
		return nil, fmt.Errorf("open generation %s: %w", filepath.Base(dir), err)
	}
	return db, nil
}

// settleGeneration makes a finished generation openable read-only: after
// a crash its memtable must first be replayed by a read-write open, which
// also trims a write torn by the crash.
func (s *Spool) settleGeneration(dir string) (*badger.DB, error) {
	if err := clearUnsizedLogs(dir, s.log); err != nil {
		return nil, fmt.Errorf("open generation %s: %w", filepath.Base(dir), err)
	}
	if err := checkDamage(dir); err != nil {
		return nil, fmt.Errorf("open generation %s: %w (move the directory aside to start without it)", filepath.Base(dir), err)
	}
	if !hasMemtables(dir) {
		db, err := s.openFinished(dir)
		if err == nil {
			return db, nil
		}
	}
	// Not closed cleanly: only a read-write open replays its memtables
	// (tried read-only first, Badger's failed open left goroutines behind).
	rw, rwErr := s.openGeneration(dir)
	if rwErr != nil {
		return nil, fmt.Errorf("%w (move the directory aside to start without it)", rwErr)
	}
	if err := rw.Close(); err != nil {
		return nil, fmt.Errorf("close generation %s: %w", filepath.Base(dir), err)
	}
	s.log.Info("recovered generation after an unclean stop", "dir", filepath.Base(dir))
	db, err := s.openFinished(dir)
	if err != nil {
		return nil, fmt.Errorf("%w (move the directory aside to start without it)", err)
	}
	return db, nil
}

// checkDamage finds, in the Badger database at dir, the damage that
// Badger would not report as an error of its own:
//
//   - A table whose footer lengths do not fit in the file. Badger reads
//     them unchecked when it opens a table, in a goroutine of its own, so a
//     table cut short is a panic that ends the process naming nothing; its
//     checksums cover the rest. The layout is Badger's (table.initIndex):
//     ... index | index length (4) | checksum | checksum length (4). A table
//     a crash left half made is sized before it is written, its footer
//     zeros, and not in the MANIFEST, which Badger then deletes: zeros pass
//     here, and so does an empty file (a crash between creating and sizing
//     it).
//   - Data files without the MANIFEST that lists them. Opened read-write,
//     Badger would start the database anew and delete its tables: for a
//     generation every key, so every block; for meta every cursor and dead
//     letter. A database that crashed while being created, or was never
//     created, lacks both, which is harmless.
func checkDamage(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	manifest, data := false, false
	for _, e := range entries {
		switch name := e.Name(); {
		case name == "MANIFEST":
			manifest = true
		case filepath.Ext(name) == ".sst":
			data = true
			if err := checkTableFooter(filepath.Join(dir, name)); err != nil {
				return err
			}
		case filepath.Ext(name) == ".vlog", filepath.Ext(name) == ".mem":
			data = true
		}
	}
	if data && !manifest {
		return errors.New("its MANIFEST is missing but its data files are there")
	}
	return nil
}

// checkTableFooter checks the footer of the table at path (see checkDamage),
// reading only the footer.
func checkTableFooter(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	end := fi.Size()
	if end == 0 {
		return nil
	}
	var n [4]byte
	for range 2 { // the checksum's length, then the index's
		if end -= 4; end >= 0 {
			if _, err := f.ReadAt(n[:], end); err != nil {
				return err
			}
			end -= int64(binary.BigEndian.Uint32(n[:]))
		}
		if end < 0 {
			return fmt.Errorf("table %s is cut short (%d bytes)", filepath.Base(path), fi.Size())
		}
	}
	return nil
}

// recover rebuilds the in-memory state from disk: the generations, the
// next sequence number and every consumer's cursor. A consumer without a
// cursor starts at the oldest stored event, so a newly added destination
// receives the backlog. A generation that cannot be opened stops the
// start-up with its name: guessing past damage could lose intact data.
func (s *Spool) recover() error {
	if err := sweepRemovals(s.cfg.Dir); err != nil {
		return err
	}
	if err := sweepTemporary(s.cfg.Dir); err != nil {
		return err
	}
	gens, err := listGenerations(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("list generations: %w", err)
	}
	kept := gens[:0]
	for _, g := range gens {
		s.nextGen = max(s.nextGen, g.num+1)
		db, err := s.settleGeneration(g.dir)
		if err != nil {
			return err
		}
		first, last, n, err := scanBlocks(db)
		if err != nil {
			return fmt.Errorf("scan generation %s: %w", filepath.Base(g.dir), err)
		}
		if err := db.Close(); err != nil {
			return fmt.Errorf("close generation %s: %w", filepath.Base(g.dir), err)
		}
		if n == 0 {
			// A spare opened ahead of need, or a generation whose every
			// write was lost with an unclean stop: nothing to keep.
			if err := g.remove(); err != nil {
				return err
			}
			continue
		}
		g.blocks, g.first = n, first.first
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

	cursors, readMarks := make(map[string]uint64), make(map[string]uint64)
	err = s.meta.View(func(txn *badger.Txn) error {
		if err := readPositions(txn, prefixCursor, "cursor", cursors); err != nil {
			return err
		}
		// Cursors are a lower bound too: once every generation is
		// removed, numbering must not restart below an acknowledged
		// position.
		for _, c := range cursors {
			s.next = max(s.next, c)
		}
		if err := readPositions(txn, prefixReadMark, "read mark", readMarks); err != nil {
			return err
		}
		rit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDead}, Reverse: true})
		defer rit.Close()
		rit.Seek([]byte{prefixDead, 0xff})
		if rit.Valid() {
			s.nextDead.Store(binary.BigEndian.Uint64(rit.Item().Key()[1:]) + 1)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read cursors: %w", err)
	}
	lease, err := readLease(s.cfg.Dir)
	if err != nil {
		return err
	}
	stored := s.next
	if lease > s.next {
		// Numbers up to the lease may have been handed out before a crash.
		s.gap = numberingGap{from: s.next, to: lease}
		s.next = lease
		s.log.Info("numbering resumes at the sequence lease after an unclean stop", "stored_end", stored, "next_seq", lease)
	}
	s.leased.Store(lease)
	for _, name := range s.cfg.Consumers {
		c := &consumer{name: name}
		start, ok := cursors[name]
		switch {
		case !ok && len(s.gens) > 0:
			start = s.gens[0].first
		case !ok || start >= stored:
			// Nothing is stored past it: the skipped numbers are not
			// backlog to wait on.
			start = s.next
		}
		c.cursor.Store(start)
		c.saved.Store(start)
		c.pos = start
		c.savedRead.Store(start)
		if read := min(readMarks[name], s.next); ok && read > start {
			c.savedRead.Store(read)
		}
		s.consumers[name] = c
	}
	if err := s.loadQuarantined(); err != nil {
		return err
	}
	// Writing always continues in a fresh generation, so that every
	// generation the writer has left is only ever opened read-only.
	return s.startGeneration()
}

// prepareSpare opens the generation the writer will move to next, so that
// moving is a swap rather than the tens of milliseconds Badger takes to
// create a database, which every request waiting on that commit would feel.
func (s *Spool) prepareSpare() {
	s.genMu.Lock()
	if s.spare != nil {
		s.genMu.Unlock()
		return
	}
	num := s.nextGen
	s.nextGen++
	s.genMu.Unlock()
	g, err := s.createGeneration(num)
	if err != nil {
		s.log.Warn("prepare next generation", "err", err)
		return
	}
	s.genMu.Lock()
	s.spare = g // only this loop sets it, so it is still nil
	s.genMu.Unlock()
}

func (s *Spool) createGeneration(num uint64) (*generation, error) {
	g := &generation{num: num, dir: filepath.Join(s.cfg.Dir, genDirName(num))}
	db, err := s.openGeneration(g.dir)
	if err != nil {
		return nil, err
	}
	// The generation's own directory too: Badger syncs it for its
	// MANIFEST, not for the log files it creates after.
	if err := errors.Join(syncDir(g.dir), syncDir(s.cfg.Dir)); err != nil {
		_ = db.Close()
		return nil, err
	}
	g.db = db
	return g, nil
}

// sweepRemovals finishes removals that a crash interrupted.
func sweepRemovals(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read spool dir: %w", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".removing") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("sweep %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// startGeneration moves the writer to a new generation, holding events
// from s.next on: the spare if one is ready, else one opened now. Only the
// committer (or recover, before it runs) calls it.
func (s *Spool) startGeneration() error {
	s.genMu.Lock()
	g := s.spare
	s.spare = nil
	num := s.nextGen
	if g == nil {
		s.nextGen++
	}
	s.genMu.Unlock()
	select {
	case s.spareTaken <- struct{}{}:
	default:
	}
	if g == nil {
		var err error
		if g, err = s.createGeneration(num); err != nil {
			return err
		}
	}
	s.mu.Lock()
	g.first = s.next
	s.mu.Unlock()
	g.created = time.Now()
	g.refs = 1 // the writer's
	s.genMu.Lock()
	prev := s.active
	s.gens = append(s.gens, g)
	s.active = g
	s.activeBytes = 0
	s.genMu.Unlock()
	if prev != nil {
		if s.cfg.Sync == SyncInterval {
			// The background fsync follows the active generation only.
			if err := prev.db.Sync(); err != nil {
				s.log.Error("sync finished generation", "err", err)
			}
		}
		prev.release()
		// Readers that keep up find its blocks in the recent cache; one
		// that needs it later reopens it read-only. Closing it is a
		// memtable flush and an fsync: not on the commit path.
		s.spawn(func() { prev.closeIfUnused(s.log) })
	}
	return nil
}

func (s *Spool) closeGenerations() error {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	var first error
	for _, g := range s.gens {
		g.mu.Lock()
		if g.db != nil {
			if err := g.db.Close(); err != nil && first == nil {
				first = fmt.Errorf("close generation: %w", err)
			}
			g.db = nil
		}
		g.mu.Unlock()
	}
	return first
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
	cursorsErr := s.saveCursors()
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
	metaErr := s.meta.Close()
	if metaErr != nil {
		metaErr = fmt.Errorf("close spool meta: %w", metaErr)
	}
	return errors.Join(cursorsErr, leaseErr, generationsErr, spareErr, metaErr)
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
	return Backlog{Events: int64(next - cursor - s.gap.within(cursor, next)), Oldest: oldest}
}

// generationsFrom returns the generations that may hold seq or later.
func (s *Spool) generationsFrom(seq uint64) []*generation {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	i := sort.Search(len(s.gens), func(i int) bool { return s.gens[i].first > seq })
	if i > 0 {
		i--
	}
	return slices.Clone(s.gens[i:])
}

// blockAtOrAfter returns the stored block holding seq, or else the first
// after it, and its generation; false when there is none. A generation
// that cannot be opened is an error, never "nothing there": readers would
// skip its events.
func (s *Spool) blockAtOrAfter(seq uint64) (*generation, blockMeta, bool, error) {
	for _, g := range s.generationsFrom(seq) {
		db, err := g.acquire(s.openFinished)
		if err != nil {
			return nil, blockMeta{}, false, err
		}
		m, ok := findBlock(db, seq)
		g.release()
		if ok {
			return g, m, true, nil
		}
	}
	return nil, blockMeta{}, false, nil
}

func findBlock(db *badger.DB, seq uint64) (m blockMeta, ok bool) {
	_ = db.View(func(txn *badger.Txn) error {
		rit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}, Reverse: true})
		rit.Seek(seekBlockKey(seq))
		if rit.Valid() {
			if m, ok = parseBlockKey(rit.Item().Key()); ok && m.end() > seq && m.count > 0 {
				rit.Close()
				return nil
			}
		}
		rit.Close()
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		defer it.Close()
		it.Seek(blockKey(seq, 0, time.UnixMilli(0)))
		ok = false
		if it.Valid() {
			m, ok = parseBlockKey(it.Item().Key())
		}
		return nil
	})
	return m, ok
}

// recentIndex finds the cached block holding seq; s.mu must be held.
func (s *Spool) recentIndex(seq uint64) int {
	i, found := slices.BinarySearchFunc(s.recent, seq, func(b recentBlock, seq uint64) int {
		switch {
		case b.meta.end() <= seq:
			return -1
		case b.meta.first > seq:
			return 1
		}
		return 0
	})
	if !found {
		return -1
	}
	return i
}
