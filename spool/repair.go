package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/table"
)

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
//     ... index | index length (4) | checksum | checksum length (4). Only
//     the tables the MANIFEST lists are checked: one a crash left half
//     made is not listed, and Badger deletes it.
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
	listed, manifest := manifestTables(dir)
	data := false
	for _, e := range entries {
		switch name := e.Name(); {
		case filepath.Ext(name) == ".sst":
			data = true
			// A table the MANIFEST does not list was being made when the
			// process died, and Badger deletes it: after a power cut, what
			// the disk kept of it may be anything.
			if id, ok := table.ParseFileID(name); ok && listed != nil && !listed[id] {
				continue
			}
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

// manifestTables returns the tables the MANIFEST in dir lists, and
// whether there is a MANIFEST; listed is nil if it cannot be read, which
// Badger's open reports.
func manifestTables(dir string) (listed map[uint64]bool, exists bool) {
	f, err := os.Open(filepath.Join(dir, "MANIFEST"))
	if err != nil {
		return nil, !errors.Is(err, fs.ErrNotExist)
	}
	defer f.Close()
	m, _, err := badger.ReplayManifestFile(f, 0, badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		return nil, true
	}
	listed = make(map[uint64]bool, len(m.Tables))
	for id := range m.Tables {
		listed[id] = true
	}
	return listed, true
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

// clearUnsizedLogs removes the memtable (.mem) and value-log (.vlog) files
// in the Badger database at dir that a crash left with no bytes at all.
// Badger creates such a file in one system call and sizes it in a second
// (dgraph-io/badger#2207): killed between the two, or losing power before
// the size was synced, it leaves an empty file that it then refuses to open
// ("Create a new file"), and the spool could not start again without an
// operator. A file with no bytes holds no entry, and nothing can point into
// it, so removing it loses nothing; Badger makes a new one as it opens.
func clearUnsizedLogs(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	removed := 0
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".mem") || strings.HasSuffix(name, ".vlog")) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if info.Size() != 0 {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("remove empty %s: %w", name, err)
		}
		log.Info("removed a log file a crash left empty", "dir", filepath.Base(dir), "file", name)
		removed++
	}
	if removed == 0 {
		return nil
	}
	return syncDir(dir)
}

// sweepTemporary removes the temporary files a crash left behind a
// writeFileDurably in dir.
func sweepTemporary(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), tmpSuffix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("sweep %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// hasMemtables reports whether the Badger database at dir has memtable
// files: Badger removes them when it closes cleanly, so they are left only
// by a crash, with writes that a read-write open replays.
func hasMemtables(dir string) bool {
	mems, _ := filepath.Glob(filepath.Join(dir, "*.mem"))
	return len(mems) > 0
}

// createDir creates dir, and any parent missing, durably: a directory's
// name is in its parent, which is fsynced, or a power cut soon after the
// first start could take the whole spool with it.
func createDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := createDir(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(filepath.Dir(dir))
}
