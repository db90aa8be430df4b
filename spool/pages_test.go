package spool

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestOnlyCleanReadOnlyMappingsOfTheProgramAreReleased(t *testing.T) {
	const exe = "/usr/bin/spillway"
	smaps := `00400000-00cc1000 r-xp 00000000 08:01 42 /usr/bin/spillway
Size:               8964 kB
Rss:                6784 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
00cc1000-0160c000 r--p 008c1000 08:01 42 /usr/bin/spillway
Size:               9516 kB
Anonymous:             0 kB
0160c000-016b4000 rw-p 0120c000 08:01 42 /usr/bin/spillway
Anonymous:           112 kB
016b4000-016c0000 r--p 012b4000 08:01 42 /usr/bin/spillway
Anonymous:             8 kB
016c0000-016d0000 r--s 00000000 08:01 42 /usr/bin/spillway
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 77 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
`
	got := cleanProgramMappings([]byte(smaps), exe)
	want := []mapping{{0x400000, 0xcc1000}, {0xcc1000, 0x160c000}}
	if !slices.Equal(got, want) {
		t.Errorf("released %x, want %x: the program's text and read-only data only, not its written data, relocated data, a shared mapping or another file", got, want)
	}
}

// Dropping the program's pages must leave it running (the pages come back
// from the page cache) and take them out of what it is charged for.
func TestReleasedProgramPagesLeaveTheProgramRunning(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	defer s.Close(context.Background())
	before := programResidentKiB(t)
	s.releaseProgramPages()
	after := programResidentKiB(t)
	if after >= before/2 {
		t.Errorf("%d KiB of the program resident before releasing its pages, %d KiB after, want under half", before, after)
	}
	if err := s.Append(t.Context(), events(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	if recs := readAll(t, s, "a"); len(recs) != 10 {
		t.Errorf("read back %d events after the release, want 10", len(recs))
	}
}

// programResidentKiB adds up the resident pages of the test's executable.
func programResidentKiB(t *testing.T) int64 {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip("needs Linux's /proc:", err)
	}
	var kib int64
	ours := false
	for line := range strings.Lines(string(smaps)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if fields[0] == "Rss:" && ours {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			kib += n
		}
		if _, _, _, path, ok := mappingHeader(bytes.Fields([]byte(line))); ok {
			ours = path == exe
		}
	}
	return kib
}
