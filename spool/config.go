package spool

import (
	"errors"
	"fmt"
	"slices"
	"time"
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
	// DedupeWindow is how long a stored event's (write key, messageId)
	// is remembered, so that SubmitFrom skips its duplicates. Zero turns
	// de-duplication off (--dedupe-window, default DefaultDedupeWindow).
	DedupeWindow time.Duration
	// DedupeMaxBytes bounds the messageId index on disk; the oldest
	// entries go first. Zero means DefaultDedupeMaxBytes.
	DedupeMaxBytes int64

	now func() time.Time // the index's clock; nil: time.Now. For tests.
}

// MinMaxBytes is the smallest MaxBytes that --spool-max-bytes takes, 0
// (no bound) aside. The spool's own databases take room whatever the
// backlog: about 75 KiB when empty, up to about 2 MiB once the cursors'
// memtable and the active generation's have filled (measured by replaying
// hours of cursor saves into a database with meta/'s options). A bound
// below that would make the spool full of itself: refusing every event,
// it has nothing to deliver, so nothing would ever free room.
const MinMaxBytes = 4 << 20

// ValidateFlags is Validate for values read from the flags. No flag's
// default is zero, so a zero --sync-interval was written by someone who
// meant something other than the default, and is refused where Validate
// reads it as DefaultSyncInterval; and a --spool-max-bytes other than 0
// must be at least MinMaxBytes.
func (c *Config) ValidateFlags() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.SyncInterval == 0 {
		return errors.New("--sync-interval must be > 0")
	}
	if c.DedupeMaxBytes < MinDedupeMaxBytes {
		return fmt.Errorf("--dedupe-max-bytes %d bytes is too small: give at least 64KiB", c.DedupeMaxBytes)
	}
	if c.MaxBytes > 0 && c.MaxBytes < MinMaxBytes {
		return fmt.Errorf("--spool-max-bytes %d bytes is too small: the spool's own databases take up to about 2 MiB; give at least 4MiB, or 0 for no bound", c.MaxBytes)
	}
	return nil
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
	case c.DedupeWindow < 0:
		return errors.New("--dedupe-window must be >= 0 (0 turns de-duplication off)")
	case c.DedupeMaxBytes != 0 && c.DedupeMaxBytes < MinDedupeMaxBytes:
		return fmt.Errorf("--dedupe-max-bytes %d bytes is too small: give at least 64KiB", c.DedupeMaxBytes)
	}
	// A name given twice is one consumer: that destination names are
	// unique is forwarders' rule, checked there.
	if slices.Contains(c.Consumers, "") {
		return errors.New("a consumer name is empty")
	}
	return nil
}
