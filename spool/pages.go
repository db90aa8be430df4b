package spool

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

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
		if errno := dropPages(start, end); errno != 0 {
			s.log.Debug("release mapped pages", "err", errno)
			return
		}
	}
}

// dropPages unmaps this process's pages from start to end, a file's
// mapping: they are read again from the page cache at the next access.
// Not unix.Madvise: that takes a slice, and these bytes are Badger's or
// the program's. The call is the same.
func dropPages(start, end uint64) syscall.Errno {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
	return errno
}

// sharedMapping parses a line of /proc/self/maps and says whether it maps
// a file shared.
func sharedMapping(line []byte) (start, end uint64, path string, ok bool) {
	start, end, perms, path, ok := mappingHeader(bytes.Fields(line))
	if !ok || path == "" || perms[3] != 's' {
		return 0, 0, "", false
	}
	return start, end, path, true
}

// mappingHeader parses the fields of a mapping's line in /proc/self/maps
// or smaps: "start-end perms offset dev inode [path]".
func mappingHeader(fields [][]byte) (start, end uint64, perms []byte, path string, ok bool) {
	if len(fields) < 5 || len(fields[1]) < 4 {
		return 0, 0, nil, "", false
	}
	lo, hi, found := bytes.Cut(fields[0], []byte{'-'})
	if !found {
		return 0, 0, nil, "", false
	}
	start, err1 := strconv.ParseUint(string(lo), 16, 64)
	end, err2 := strconv.ParseUint(string(hi), 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return 0, 0, nil, "", false
	}
	if len(fields) > 5 {
		path = string(fields[5])
	}
	return start, end, fields[1], path, true
}

// releaseProgramPages drops this process's pages of its own executable.
// Go's start-up runs every package's init, which touches most of a large
// binary's code and read-only data: 15 of the 18 MiB a fresh sidecar was
// resident in, of which an idle one maps under 2 MiB again. The pages stay
// in the page cache, so what is used again is mapped again without a read
// of the disk.
//
// Only read-only private mappings with no anonymous pages qualify: a
// position-independent build's relocated data is made read-only after the
// loader writes it, and dropping those pages would lose the writes.
// The mappings are read again each time: a debugger's breakpoint or an
// eBPF agent's uprobe (some trace Go's TLS functions this way) is written
// into a private copy of a code page, which dropping would undo.
func (s *Spool) releaseProgramPages() {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return // not Linux: nothing to do
	}
	for _, m := range cleanProgramMappings(smaps, exe) {
		if errno := dropPages(m.start, m.end); errno != 0 {
			s.log.Debug("release program pages", "err", errno)
			return
		}
	}
}

type mapping struct{ start, end uint64 }

// cleanProgramMappings returns the mappings of exe in smaps (the text of
// /proc/self/smaps) that are private, not writable and hold no anonymous
// page.
func cleanProgramMappings(smaps []byte, exe string) []mapping {
	var (
		found []mapping
		cur   mapping
		ours  bool // cur maps exe, read-only and private
	)
	for line := range bytes.Lines(smaps) {
		if anon, ok := bytes.CutPrefix(line, []byte("Anonymous:")); ok {
			if ours && string(bytes.TrimSpace(anon)) == "0 kB" {
				found = append(found, cur)
			}
			ours = false
			continue
		}
		start, end, perms, path, ok := mappingHeader(bytes.Fields(line))
		if !ok {
			continue
		}
		cur = mapping{start, end}
		ours = path == exe && perms[1] == '-' && perms[3] == 'p'
	}
	return found
}
