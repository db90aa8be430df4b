package spool

import (
	"fmt"
	"math"
	"path/filepath"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

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
		// No compactor goroutines: each ticks every 50 ms whether or not
		// there is anything to compact, and with three databases open they
		// were most of an idle spillway's CPU and wake-ups. A generation
		// holds only keys in its tree, a table or two before it is removed
		// whole; meta's tree is compacted by the maintenance loop
		// (compactMeta). Without compactors nothing would ever drain level
		// 0, so writes must never wait for it to.
		WithNumCompactors(0).
		WithNumLevelZeroTablesStall(math.MaxInt32).
		// A memtable flush builds its table in a buffer of twice this:
		// a generation's tables hold only keys, a few KiB.
		WithBaseTableSize(256 << 10).
		WithValueLogFileSize(genMaxBytes + maxBlockBytes).
		WithNumGoroutines(2).
		// A table holding a damaged key would list blocks that are not
		// there, or hide those that are: checked whole when opened, a
		// damaged table stops the open instead (it holds keys only, a
		// few KiB, so the check is cheap).
		WithChecksumVerificationMode(options.OnTableRead).
		// The spool's lock on its directory (lockDir) keeps every other
		// process out before any database opens. Badger's own lock, a
		// flock it releases by closing its file, outlived a close while a
		// child process forked at that moment held a copy of the file
		// (tests start processes in parallel), and the next open of the
		// same generation failed as if another process had it.
		WithBypassLockGuard(true)
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

// openMeta opens the database of cursors, read marks, marks and lanes,
// after repairing what a crash may have left in it.
func (s *Spool) openMeta() (*badger.DB, error) {
	dir := metaDir(s.cfg.Dir)
	if err := clearUnsizedLogs(dir, s.log); err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	if err := checkDamage(dir); err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	// Parked events (lanes) live in meta's LSM tree (below the value
	// threshold), where compaction reclaims them once unparked: Badger's
	// value-log GC reclaimed nothing after deletes. Badger caps a
	// transaction at 15% of the memtable, so a larger one than a
	// generation's means fewer commits for a park. Badger builds a table
	// in memory, a block at a time, and a value larger than its block
	// makes it grow the block by doubling: blocks that hold a whole
	// event, and small tables, keep that to a few MiB.
	meta, err := badger.Open(s.badgerOptions(dir).
		WithValueThreshold(64 << 10).WithValueLogFileSize(4 << 20).WithMemTableSize(512 << 10).
		WithBaseTableSize(512 << 10).WithBlockSize(64 << 10).
		// Checked whole when opened, its tables, most of them dead-letter
		// blocks, were read into memory at every start: the damage check
		// a block read makes is enough for keys that name no blocks.
		WithChecksumVerificationMode(options.OnBlockRead))
	if err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	// Badger creates its log files without syncing their directory: a
	// power cut could take the files, with everything synced into them.
	if err := syncDir(dir); err != nil {
		_ = meta.Close()
		return nil, err
	}
	return meta, nil
}
