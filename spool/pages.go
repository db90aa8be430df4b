package spool

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// releaseLogEveryBytes is how much the writer commits between two
// releaseLogPages (a pass over /proc/self/maps, tens of microseconds).
const releaseLogEveryBytes = 1 << 20

// releaseTablePages hands back the memory of meta's table files. Badger
// maps its tables into memory and writes a new one through its mapping:
// every page written or read stays resident, counted in the process's
// RSS (and against a container's memory limit) until the kernel needs it.
// When dead letters were kept in meta, listing 60,000 of them took a
// sidecar from 58 to 73 MiB.
func (s *Spool) releaseTablePages() {
	dir, err := filepath.Abs(metaDir(s.cfg.Dir))
	if err != nil {
		return
	}
	s.releaseMappedPages(func(path string) bool {
		return filepath.Dir(path) == dir && filepath.Ext(path) == ".sst"
	})
}

// releaseLogPages hands back the memory of the generations' value logs,
// where the events' blocks are. Badger writes a log through its mapping
// and the readers read it there, so at full load every page of the last
// few generations was resident: 12 MiB of the 64 that spillway keeps to,
// which the Go heap's limit had to leave out, its collector running
// every half MiB allocated.
func (s *Spool) releaseLogPages() {
	dir, err := filepath.Abs(s.cfg.Dir)
	if err != nil {
		return
	}
	s.releaseMappedPages(func(path string) bool {
		gen := filepath.Dir(path)
		return filepath.Dir(gen) == dir && strings.HasPrefix(filepath.Base(gen), genPrefix) && filepath.Ext(path) == ".vlog"
	})
}

// releaseMappedPages drops this process's pages of the shared file
// mappings whose path selects. Mapped shared, a file's pages belong to
// the page cache, which keeps what was written (synced or not): the next
// access faults them in again from there, so dropping them loses nothing,
// even while Badger writes into them.
func (s *Spool) releaseMappedPages(selects func(path string) bool) {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return // not Linux: nothing to do
	}
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		start, end, path, ok := sharedMapping(sc.Bytes())
		if !ok || !selects(path) {
			continue
		}
		// Not unix.Madvise: that takes a slice, and these bytes are
		// Badger's. The call is the same.
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
		if errno != 0 {
			s.log.Debug("release mapped pages", "err", errno)
			return
		}
	}
}

// sharedMapping parses a line of /proc/self/maps ("start-end perms
// offset dev inode path") and says whether it maps a file shared.
func sharedMapping(line []byte) (start, end uint64, path string, ok bool) {
	fields := bytes.Fields(line)
	if len(fields) < 6 {
		return 0, 0, "", false
	}
	perms := fields[1]
	if len(perms) < 4 || perms[3] != 's' {
		return 0, 0, "", false
	}
	addrs := bytes.SplitN(fields[0], []byte{'-'}, 2)
	if len(addrs) != 2 {
		return 0, 0, "", false
	}
	start, err1 := strconv.ParseUint(string(addrs[0]), 16, 64)
	end, err2 := strconv.ParseUint(string(addrs[1]), 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return 0, 0, "", false
	}
	return start, end, string(fields[5]), true
}
