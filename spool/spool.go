package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
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

// Defaults for Config.
const (
	DefaultDir          = "./spillway-data"
	DefaultSyncInterval = 50 * time.Millisecond
	DefaultMaxBytes     = 1 << 30
)

// maxBlockBytes bounds how much event data one group commit gathers: large
// enough to amortise an fsync over many requests, small enough that one
// block decodes quickly and stays far below Badger's value size limit.
const maxBlockBytes = 1 << 20

// recentCacheBytes bounds the freshly written blocks kept decoded in memory,
// so destinations that keep up never read back from disk.
const recentCacheBytes = 8 << 20

// Config configures a Spool.
type Config struct {
	// Dir is the spool directory, created 0700 if missing.
	Dir string
	// Sync is the durability of an acknowledged Append. Zero is SyncAlways.
	Sync SyncMode
	// SyncInterval is how often SyncInterval mode fsyncs. Zero means
	// DefaultSyncInterval.
	SyncInterval time.Duration
	// MaxBytes bounds the spool's size on disk; Append answers ErrFull
	// beyond it. Zero means no bound.
	MaxBytes int64
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
	db      *badger.DB
	log     *slog.Logger
	metrics *metrics

	reqs chan *appendReq // unbuffered: a send succeeds only while the writer runs
	quit chan struct{}
	wg   sync.WaitGroup

	closing   atomic.Bool
	full      atomic.Bool
	closeOnce sync.Once
	closeErr  error

	nextDead atomic.Uint64

	mu        sync.Mutex
	next      uint64        // sequence number of the next event appended
	changed   chan struct{} // closed at the next commit
	consumers map[string]*consumer
	recent    []*decodedBlock // newest last, contiguous with next
	recentLen int             // bytes held by recent

	quarantineMu sync.Mutex
}

type consumer struct {
	name   string
	mu     sync.Mutex
	pos    uint64 // next seq Read returns; only the consumer's loop moves it
	cursor atomic.Uint64
	cur    *decodedBlock
}

// Open opens or creates the spool in cfg.Dir, recovering after a crash
// whatever Badger had made durable. A nil logger discards; a nil reg
// registers nowhere.
func Open(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Spool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "spool")
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create spool dir: %w", err)
	}
	db, err := badger.Open(badgerOptions(cfg, logger))
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", cfg.Dir, err)
	}
	s := &Spool{
		cfg:       cfg,
		db:        db,
		log:       logger,
		reqs:      make(chan *appendReq),
		quit:      make(chan struct{}),
		changed:   make(chan struct{}),
		consumers: make(map[string]*consumer, len(cfg.Consumers)),
	}
	if err := s.recover(); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.metrics = newMetrics(reg, s)
	s.refreshSize()
	s.spawn(s.writeLoop)
	s.spawn(s.maintenanceLoop)
	if cfg.Sync == SyncInterval {
		s.spawn(s.syncLoop)
	}
	logger.Info("spool open", "dir", cfg.Dir, "sync", cfg.Sync.String(), "next_seq", s.next)
	return s, nil
}

func badgerOptions(cfg Config, logger *slog.Logger) badger.Options {
	return badger.DefaultOptions(cfg.Dir).
		WithLogger(badgerLogger{logger}).
		WithLoggingLevel(badger.WARNING).
		// One fsync per transaction, and we commit one transaction per
		// group: this is what makes an acknowledged block durable. db.Sync
		// alone would miss value-log and memtable files just rotated out.
		WithSyncWrites(cfg.Sync == SyncAlways).
		WithMetricsEnabled(false).
		WithDetectConflicts(false).
		// Blocks go to the value log: kept in the LSM tree their
		// compaction would cost more than a core.
		WithValueThreshold(1 << 10).
		// Values are zstd blocks already; keys are tiny.
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		// A sidecar lives under a memory limit: small memtables and value
		// log files (both are mmapped, so they count toward RSS).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(2 << 20).
		WithValueLogFileSize(32 << 20).
		WithNumCompactors(2).
		WithNumGoroutines(2)
}

// recover rebuilds the in-memory state: the next sequence number and every
// consumer's cursor. A consumer without a cursor starts at the oldest
// stored event, so a newly added destination receives the backlog.
func (s *Spool) recover() error {
	oldest, last, found, err := s.blockBounds()
	if err != nil {
		return fmt.Errorf("scan blocks: %w", err)
	}
	cursors := make(map[string]uint64)
	var maxCursor uint64
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixCursor}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 8 {
				return fmt.Errorf("cursor %q: %d bytes, want 8", it.Item().Key()[1:], len(v))
			}
			c := binary.BigEndian.Uint64(v)
			cursors[string(it.Item().Key()[1:])] = c
			maxCursor = max(maxCursor, c)
		}
		it2 := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDead}, Reverse: true})
		defer it2.Close()
		it2.Seek([]byte{prefixDead, 0xff})
		if it2.Valid() {
			s.nextDead.Store(binary.BigEndian.Uint64(it2.Item().Key()[1:]) + 1)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read cursors: %w", err)
	}
	// Cursors are a lower bound too: once every block is reclaimed, the
	// numbering must not restart below what consumers have acknowledged.
	s.next = maxCursor
	if found {
		s.next = max(s.next, last.end())
	}
	for _, name := range s.cfg.Consumers {
		c := &consumer{name: name}
		start, ok := cursors[name]
		if !ok {
			start = s.next
			if found {
				start = oldest.first
			}
		}
		c.cursor.Store(start)
		c.pos = start
		s.consumers[name] = c
	}
	return nil
}

// blockBounds returns the oldest and newest stored blocks.
func (s *Spool) blockBounds() (oldest, newest blockMeta, found bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		it.Rewind()
		if it.Valid() {
			oldest, found = parseBlockKey(it.Item().Key())
		}
		it.Close()
		if !found {
			return nil
		}
		rit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}, Reverse: true})
		defer rit.Close()
		rit.Seek(seekBlockKey(^uint64(0)))
		if rit.Valid() {
			newest, _ = parseBlockKey(rit.Item().Key())
		}
		return nil
	})
	return oldest, newest, found, err
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
	if s.full.Load() {
		return ErrFull
	}
	return nil
}

// Changed returns a channel closed at the next commit of events.
func (s *Spool) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Close stops accepting events, commits those already handed to the
// writer, and closes Badger. Cursors are already durable: Ack writes them.
// It may be called more than once and returns the first call's error.
func (s *Spool) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		close(s.quit)
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			// Badger must not be closed under a running writer; waiting
			// longer is the only safe choice, so say why we are late.
			s.log.Warn("spool close waits for in-flight writes past its deadline")
			<-done
		}
		if s.cfg.Sync == SyncInterval {
			if err := s.db.Sync(); err != nil {
				s.closeErr = fmt.Errorf("sync spool: %w", err)
			}
		}
		if err := s.db.Close(); err != nil && s.closeErr == nil {
			s.closeErr = fmt.Errorf("close badger: %w", err)
		}
		s.log.Info("spool closed")
	})
	return s.closeErr
}

func (s *Spool) consumer(name string) (*consumer, error) {
	c, ok := s.consumers[name] // never written after Open
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
		oldest = s.recent[i].stored
	}
	s.mu.Unlock()
	if cursor >= next {
		return Backlog{}
	}
	if oldest.IsZero() && !s.closing.Load() {
		if m, ok := s.blockAtOrAfter(cursor); ok {
			oldest = m.stored
		}
	}
	return Backlog{Events: int64(next - cursor), Oldest: oldest}
}

// blockAtOrAfter returns the stored block holding seq, or else the first after it.
func (s *Spool) blockAtOrAfter(seq uint64) (blockMeta, bool) {
	var m blockMeta
	var ok bool
	_ = s.db.View(func(txn *badger.Txn) error {
		rit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}, Reverse: true})
		rit.Seek(seekBlockKey(seq))
		if rit.Valid() {
			if m, ok = parseBlockKey(rit.Item().Key()); ok && m.end() > seq {
				rit.Close()
				return nil
			}
		}
		rit.Close()
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		defer it.Close()
		it.Seek(blockKey(seq, 0, time.UnixMilli(0)))
		if it.Valid() {
			m, ok = parseBlockKey(it.Item().Key())
		} else {
			ok = false
		}
		return nil
	})
	return m, ok
}

// recentIndex finds the cached block holding seq; s.mu must be held.
func (s *Spool) recentIndex(seq uint64) int {
	i, found := slices.BinarySearchFunc(s.recent, seq, func(b *decodedBlock, seq uint64) int {
		switch {
		case b.first+uint64(len(b.recs)) <= seq:
			return -1
		case b.first > seq:
			return 1
		}
		return 0
	})
	if !found {
		return -1
	}
	return i
}
