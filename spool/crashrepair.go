package spool

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

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
