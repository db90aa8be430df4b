package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
)

// Sequence numbers must never go backwards across a crash: a destination's
// cursor, and anything named after a range of numbers, would pass over
// events numbered again below it. The blocks and the cursors on disk are
// not enough to know where numbering stood. With --sync=interval the last
// blocks may be lost with a power cut while a cursor saved past them
// survives, and a generation removed once delivered takes the record of
// its numbers with it before the cursor that passed it is saved.
//
// So numbers are leased, as Badger leases its own sequences: the lease
// file holds a number above every one handed out, made durable before any
// number at or above the old lease is committed. After a crash numbering
// resumes at the lease, skipping at most leaseSize numbers that were never
// used; a clean close sets the lease to the next number, so a clean restart
// skips none.
const (
	leaseFile = "SEQUENCE"
	leaseSize = 1 << 20
)

var leaseTable = crc32.MakeTable(crc32.Castagnoli)

// readLease returns the lease stored in dir; zero when there is none yet
// (a new spool, or one written before leases).
func readLease(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, leaseFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read sequence lease: %w", err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], leaseTable) != binary.BigEndian.Uint32(b[8:]) {
		// Written whole through a rename, it cannot be torn: this is
		// damage from outside, and guessing would risk numbering backwards.
		return 0, fmt.Errorf("sequence lease %s is damaged (%d bytes)", filepath.Join(dir, leaseFile), len(b))
	}
	return binary.BigEndian.Uint64(b[:8]), nil
}

// writeLease makes lease durable in dir: written to a temporary file,
// fsynced, renamed over the old one and the directory fsynced, so a crash
// leaves the old lease or the new one, never a mix.
func writeLease(dir string, lease uint64) error {
	b := binary.BigEndian.AppendUint64(nil, lease)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, leaseTable))
	if err := writeFileDurably(filepath.Join(dir, leaseFile), b); err != nil {
		return fmt.Errorf("write sequence lease: %w", err)
	}
	return nil
}

// writeFileDurably replaces path with data: temporary file, fsync, rename,
// fsync of the directory. Open sweeps the temporary files a crash leaves.
func writeFileDurably(path string, data []byte) error {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

const tmpSuffix = ".tmp"

// ensureLease makes sure every number below upTo is covered by the durable
// lease, extending it by leaseSize when it is not. The committer calls it
// before each commit (almost always a comparison), and the maintenance
// loop ahead of need, so that the commit path seldom waits for the write.
func (s *Spool) ensureLease(upTo uint64) error {
	if upTo <= s.leased.Load() {
		return nil
	}
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if upTo <= s.leased.Load() {
		return nil
	}
	lease := upTo + leaseSize
	if err := writeLease(s.cfg.Dir, lease); err != nil {
		return err
	}
	s.leased.Store(lease)
	return nil
}

// numberingGap is a range of numbers that no stored block holds: skipped
// when numbering resumed at the lease after a crash, or held by
// generations already removed.
type numberingGap struct{ from, to uint64 }

// within returns how many of the numbers in [from, to) fall in the gap.
func (g numberingGap) within(from, to uint64) uint64 {
	lo, hi := max(from, g.from), min(to, g.to)
	if lo >= hi {
		return 0
	}
	return hi - lo
}

// inHoles returns how many of the numbers in [from, to) no stored block
// holds, as far as Open found; numbers lost since (drop-oldest) are
// counted as the cursors that pass them move.
func (s *Spool) inHoles(from, to uint64) uint64 {
	var n uint64
	for _, h := range s.holes {
		n += h.within(from, to)
	}
	return n
}
