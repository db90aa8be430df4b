package powercut

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// childEnv, when set, makes the test binary run a child's part instead of
// the tests: what touches the mount through mmap must not run in the
// process serving it (see mmapWrite).
const childEnv = "POWERCUT_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		goleak.VerifyTestMain(m)
	case "mmap":
		os.Exit(mmapChild(os.Args[1:]))
	case "badger":
		os.Exit(badgerChild(os.Args[1:]))
	case "badger-check":
		os.Exit(badgerCheckChild(os.Args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

// child returns a command running this test binary as the child named
// what.
func child(what string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+what)
	return cmd
}

// needFUSE skips a test that needs a real mount where there is none, except
// in CI, where that is a failure.
func needFUSE(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("FUSE unavailable in CI: %v", err)
		}
		t.Skipf("FUSE unavailable: %v", err)
	}
}

type fixture struct {
	fs       *FS
	dir, mnt string
	// journaling: mount with the default semantics rather than
	// StrictDirectories, which the scenarios below are written for.
	journaling bool
}

// mountTree writes tree into a new directory, all of it durable, and mounts
// it.
func mountTree(t *testing.T, seed uint64, tree map[string]string) *fixture {
	t.Helper()
	needFUSE(t)
	fx := &fixture{dir: t.TempDir(), mnt: t.TempDir()}
	writeTree(t, fx.dir, tree)
	fx.remount(t, seed)
	return fx
}

func (fx *fixture) remount(t *testing.T, seed uint64) {
	t.Helper()
	f, err := Mount(Options{Dir: fx.dir, Mountpoint: fx.mnt, Seed: seed, Logf: t.Logf, StrictDirectories: !fx.journaling})
	if err != nil {
		t.Fatal(err)
	}
	fx.fs = f
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Error(err)
		}
	})
}

func (fx *fixture) path(name string) string { return filepath.Join(fx.mnt, name) }

func (fx *fixture) cut(t *testing.T, mode Mode) Stats {
	t.Helper()
	stats, err := fx.fs.Cut(mode, nil)
	if err != nil {
		t.Fatal(err)
	}
	return stats
}

// writeTree creates tree under dir: a name ending in / is a directory, a
// value starting with "-> " a symlink, anything else a file's content.
func writeTree(t *testing.T, dir string, tree map[string]string) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(tree)) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch content := tree[name]; {
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		case strings.HasPrefix(content, "-> "):
			err = os.Symlink(strings.TrimPrefix(content, "-> "), p)
		default:
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// readTree is the inverse of writeTree.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.IsDir():
			tree[rel+"/"] = ""
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			tree[rel] = "-> " + target
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			tree[rel] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func wantTree(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	got := readTree(t, dir)
	if want == nil {
		want = map[string]string{}
	}
	if !maps.Equal(got, want) {
		t.Errorf("after the cut the tree is\n%s\nwant\n%s", showTree(got), showTree(want))
	}
}

func showTree(tree map[string]string) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(tree)) {
		content := tree[name]
		if len(content) > 40 {
			content = fmt.Sprintf("%q... (%d bytes)", content[:40], len(content))
		} else {
			content = fmt.Sprintf("%q", content)
		}
		fmt.Fprintf(&b, "\t%s: %s\n", name, content)
	}
	return b.String()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// writeFile writes content to name, fsyncing it when sync is set.
func writeFile(t *testing.T, name, content string, flag int, sync bool) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|flag, 0o644)
	must(t, err)
	_, err = f.WriteString(content)
	must(t, err)
	if sync {
		must(t, f.Sync())
	}
	must(t, f.Close())
}

func syncDir(t *testing.T, name string) {
	t.Helper()
	d, err := os.Open(name)
	must(t, err)
	must(t, d.Sync())
	must(t, d.Close())
}

func punchHole(t *testing.T, name string, off, length int64, sync bool) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	must(t, err)
	must(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length))
	if sync {
		must(t, f.Sync())
	}
	must(t, f.Close())
}

// mmapWrite writes content at off of name through a MAP_SHARED mapping,
// msyncing it when sync is set. A child process does it: a page fault on
// the mount waits for a READ this process must serve, and a Go process whose
// thread is stuck in a page fault cannot stop the world for the garbage
// collector, so serving and faulting in one process can deadlock.
func mmapWrite(t *testing.T, name string, off int, content string, sync bool) {
	t.Helper()
	out, err := child("mmap", name, strconv.Itoa(off), content, strconv.FormatBool(sync)).CombinedOutput()
	if err != nil {
		t.Fatalf("mmap child: %v: %s", err, out)
	}
}

func mmapChild(args []string) int {
	if err := mmapChildErr(args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func mmapChildErr(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("want name, offset, content, sync; got %q", args)
	}
	off, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	f, err := os.OpenFile(args[0], os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	copy(b[off:], args[2])
	if args[3] == "true" {
		if err := unix.Msync(b, unix.MS_SYNC); err != nil {
			return err
		}
	}
	return unix.Munmap(b)
}

func TestCutKeepsOnlyWhatWasMadeDurable(t *testing.T) {
	page := strings.Repeat("a", 4096)
	tests := []struct {
		scenario string
		before   map[string]string
		do       func(t *testing.T, fx *fixture)
		want     map[string]string
	}{{
		scenario: "a write without fsync is lost",
		before:   map[string]string{"f": "old"},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("f"), "new content", os.O_TRUNC, false)
		},
		want: map[string]string{"f": "old"},
	}, {
		scenario: "a write followed by fsync is kept",
		before:   map[string]string{"f": "old"},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("f"), "new content", os.O_TRUNC, true)
		},
		want: map[string]string{"f": "new content"},
	}, {
		scenario: "an append without fsync is lost and one with fsync kept",
		before:   map[string]string{"f": "old"},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("f"), "+synced", os.O_APPEND, true)
			writeFile(t, fx.path("f"), "+lost", os.O_APPEND, false)
		},
		want: map[string]string{"f": "old+synced"},
	}, {
		scenario: "a file created and fsynced in a directory never fsynced is lost",
		before:   map[string]string{"d/": ""},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("d/f"), "data", 0, true)
		},
		want: map[string]string{"d/": ""},
	}, {
		scenario: "a file created and fsynced in a directory fsynced after it is kept",
		before:   map[string]string{"d/": ""},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("d/f"), "data", 0, true)
			syncDir(t, fx.path("d"))
		},
		want: map[string]string{"d/": "", "d/f": "data"},
	}, {
		scenario: "a file whose directory was fsynced but not the file is kept empty",
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("f"), "data", 0, false)
			syncDir(t, fx.mnt)
		},
		want: map[string]string{"f": ""},
	}, {
		scenario: "a new directory whose parent was not fsynced is lost with what it holds",
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Mkdir(fx.path("d"), 0o755))
			writeFile(t, fx.path("d/f"), "data", 0, true)
			syncDir(t, fx.path("d"))
		},
	}, {
		scenario: "a new directory fsynced and fsynced in its parent keeps its entries",
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Mkdir(fx.path("d"), 0o755))
			writeFile(t, fx.path("d/f"), "data", 0, true)
			syncDir(t, fx.path("d"))
			syncDir(t, fx.mnt)
		},
		want: map[string]string{"d/": "", "d/f": "data"},
	}, {
		scenario: "a rename without a directory fsync is reverted",
		before:   map[string]string{"a": "x"},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Rename(fx.path("a"), fx.path("b")))
		},
		want: map[string]string{"a": "x"},
	}, {
		scenario: "a rename over a file followed by a directory fsync is kept",
		before:   map[string]string{"tmp": "new", "final": "old"},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Rename(fx.path("tmp"), fx.path("final")))
			syncDir(t, fx.mnt)
		},
		want: map[string]string{"final": "new"},
	}, {
		scenario: "a rename between directories both fsynced is kept",
		before:   map[string]string{"d1/a": "x", "d2/": ""},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Rename(fx.path("d1/a"), fx.path("d2/a")))
			syncDir(t, fx.path("d1"))
			syncDir(t, fx.path("d2"))
		},
		want: map[string]string{"d1/": "", "d2/": "", "d2/a": "x"},
	}, {
		scenario: "a rename between directories with only the target fsynced leaves two names",
		before:   map[string]string{"d1/a": "x", "d2/": ""},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Rename(fx.path("d1/a"), fx.path("d2/a")))
			syncDir(t, fx.path("d2"))
		},
		want: map[string]string{"d1/": "", "d1/a": "x", "d2/": "", "d2/a": "x"},
	}, {
		scenario: "an unlink without a directory fsync brings the file back with its durable content",
		before:   map[string]string{"f": "durable"},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("f"), "lost", os.O_TRUNC, false)
			must(t, os.Remove(fx.path("f")))
		},
		want: map[string]string{"f": "durable"},
	}, {
		scenario: "an unlink without a directory fsync brings back what was fsynced before it",
		before:   map[string]string{"f": "durable"},
		do: func(t *testing.T, fx *fixture) {
			writeFile(t, fx.path("f"), "synced", os.O_TRUNC, true)
			must(t, os.Remove(fx.path("f")))
		},
		want: map[string]string{"f": "synced"},
	}, {
		scenario: "an unlink followed by a directory fsync is kept",
		before:   map[string]string{"f": "durable", "g": "stays"},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Remove(fx.path("f")))
			syncDir(t, fx.mnt)
		},
		want: map[string]string{"g": "stays"},
	}, {
		scenario: "an ftruncate without fsync leaves the old size",
		before:   map[string]string{"f": "0123456789"},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Truncate(fx.path("f"), 3))
		},
		want: map[string]string{"f": "0123456789"},
	}, {
		scenario: "an ftruncate followed by fsync keeps the new size",
		before:   map[string]string{"f": "0123456789"},
		do: func(t *testing.T, fx *fixture) {
			f, err := os.OpenFile(fx.path("f"), os.O_RDWR, 0)
			must(t, err)
			must(t, f.Truncate(3))
			must(t, f.Truncate(6))
			must(t, f.Sync())
			must(t, f.Close())
		},
		want: map[string]string{"f": "012\x00\x00\x00"},
	}, {
		scenario: "a hole punched without fsync is lost",
		before:   map[string]string{"f": page + page + page},
		do: func(t *testing.T, fx *fixture) {
			punchHole(t, fx.path("f"), 4096, 4096, false)
		},
		want: map[string]string{"f": page + page + page},
	}, {
		scenario: "a hole punched and fsynced is kept",
		before:   map[string]string{"f": page + page + page},
		do: func(t *testing.T, fx *fixture) {
			punchHole(t, fx.path("f"), 4096, 4096, true)
		},
		want: map[string]string{"f": page + strings.Repeat("\x00", 4096) + page},
	}, {
		scenario: "a symlink fsynced in its directory is kept",
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Symlink("target", fx.path("l")))
			must(t, os.Symlink("lost", fx.path("m")))
			syncDir(t, fx.mnt)
			must(t, os.Remove(fx.path("m")))
		},
		want: map[string]string{"l": "-> target", "m": "-> lost"},
	}, {
		scenario: "an mmap write followed by msync is kept",
		before:   map[string]string{"f": page + page},
		do: func(t *testing.T, fx *fixture) {
			mmapWrite(t, fx.path("f"), 4096, "hello", true)
		},
		want: map[string]string{"f": page + "hello" + page[5:]},
	}, {
		scenario: "an mmap write without msync is lost",
		before:   map[string]string{"f": page + page},
		do: func(t *testing.T, fx *fixture) {
			mmapWrite(t, fx.path("f"), 4096, "hello", false)
		},
		want: map[string]string{"f": page + page},
	}, {
		scenario: "a file preallocated with ftruncate, written through mmap and msynced is kept whole",
		before:   map[string]string{"f": ""},
		do: func(t *testing.T, fx *fixture) {
			must(t, os.Truncate(fx.path("f"), 3*4096))
			mmapWrite(t, fx.path("f"), 4096+10, "hello", true)
		},
		want: map[string]string{"f": strings.Repeat("\x00", 4096+10) + "hello" + strings.Repeat("\x00", 2*4096-15)},
	}}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			fx := mountTree(t, 1, tt.before)
			tt.do(t, fx)
			fx.cut(t, Clean)
			wantTree(t, fx.dir, tt.want)
		})
	}
}

func TestMsyncReachesTheServerAsFsync(t *testing.T) {
	fx := mountTree(t, 1, map[string]string{"f": strings.Repeat("a", 8192)})
	before := fx.fs.fsyncs.Load()
	mmapWrite(t, fx.path("f"), 0, "b", false)
	if n := fx.fs.fsyncs.Load() - before; n != 0 {
		t.Errorf("munmap and close without msync sent %d FSYNC requests, want 0", n)
	}
	mmapWrite(t, fx.path("f"), 0, "c", true)
	if n := fx.fs.fsyncs.Load() - before; n != 1 {
		t.Errorf("msync(MS_SYNC) sent %d FSYNC requests, want 1", n)
	}
}

func TestOperationsAfterTheFreezeFailWithEIO(t *testing.T) {
	fx := mountTree(t, 1, map[string]string{"f": "old"})
	f, err := os.OpenFile(fx.path("f"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	_, err = fx.fs.Cut(Clean, func() error {
		// What the process under test would still do between the cut and
		// its death: none of it may become durable.
		if _, err := f.WriteAt([]byte("new"), 0); !errors.Is(err, syscall.EIO) {
			return fmt.Errorf("write after the freeze: got %v, want EIO", err)
		}
		if err := f.Sync(); !errors.Is(err, syscall.EIO) {
			return fmt.Errorf("fsync after the freeze: got %v, want EIO", err)
		}
		if err := os.WriteFile(fx.path("g"), []byte("x"), 0o644); !errors.Is(err, syscall.EIO) {
			return fmt.Errorf("create after the freeze: got %v, want EIO", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantTree(t, fx.dir, map[string]string{"f": "old"})
}

func TestUnmountKeepsEverythingWritten(t *testing.T) {
	fx := mountTree(t, 1, map[string]string{"d/f": "old"})
	writeFile(t, fx.path("d/f"), "new", os.O_TRUNC, false)
	writeFile(t, fx.path("g"), "unsynced", 0, false)
	must(t, fx.fs.Unmount())
	wantTree(t, fx.dir, map[string]string{"d/": "", "d/f": "new", "g": "unsynced"})
}

func TestCutsChainAcrossMounts(t *testing.T) {
	fx := mountTree(t, 1, nil)
	for i := range 3 {
		name := fmt.Sprintf("f%d", i)
		writeFile(t, fx.path(name), name, 0, true)
		syncDir(t, fx.mnt)
		writeFile(t, fx.path(name), "+lost", os.O_APPEND, false)
		writeFile(t, fx.path("unsynced"), "lost", 0, true)
		fx.cut(t, Clean)
		fx.remount(t, 1)
	}
	got := readTree(t, fx.mnt)
	want := map[string]string{"f0": "f0", "f1": "f1", "f2": "f2"}
	if !maps.Equal(got, want) {
		t.Errorf("after three cuts the mount shows\n%s\nwant\n%s", showTree(got), showTree(want))
	}
}

func TestMountOverTheDirectoryItself(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"old": "durable"})
	f, err := Mount(Options{Dir: dir, Mountpoint: dir, Logf: t.Logf})
	must(t, err)
	t.Cleanup(func() { must(t, f.Unmount()) })
	writeFile(t, filepath.Join(dir, "new"), "synced", 0, true)
	syncDir(t, dir)
	writeFile(t, filepath.Join(dir, "old"), "lost", os.O_TRUNC, false)
	if _, err := f.Cut(Clean, nil); err != nil {
		t.Fatal(err)
	}
	wantTree(t, dir, map[string]string{"old": "durable", "new": "synced"})
}

func TestHarshCutIsReproducibleAndKeepsASubset(t *testing.T) {
	const pages = 32
	old := strings.Repeat("a", pages*4096)
	run := func(t *testing.T, seed uint64) (map[string]string, Stats) {
		fx := mountTree(t, seed, map[string]string{"f": old})
		f, err := os.OpenFile(fx.path("f"), os.O_RDWR, 0)
		must(t, err)
		for i := range pages {
			_, err := f.WriteAt(bytes.Repeat([]byte{'b'}, 4096), int64(i)*4096)
			must(t, err)
		}
		must(t, f.Close())
		for i := range 8 {
			writeFile(t, fx.path(fmt.Sprintf("new%d", i)), "new", 0, true)
		}
		stats := fx.cut(t, Harsh)
		return readTree(t, fx.dir), stats
	}
	tree, stats := run(t, 7)
	again, statsAgain := run(t, 7)
	if !maps.Equal(tree, again) || stats != statsAgain {
		t.Fatalf("two harsh cuts with seed 7 differ:\n%s%+v\nand\n%s%+v", showTree(tree), stats, showTree(again), statsAgain)
	}
	t.Logf("harsh cut with seed 7: %+v", stats)
	if stats.TornWrites != 1 {
		t.Errorf("TornWrites = %d, want 1", stats.TornWrites)
	}
	if stats.BytesKept == 0 || stats.BytesDropped == 0 || stats.BytesKept+stats.BytesDropped != pages*4096 {
		t.Errorf("harsh cut kept %d and dropped %d of %d unsynced bytes, want a strict subset", stats.BytesKept, stats.BytesDropped, pages*4096)
	}
	if stats.DirOpsKept+stats.DirOpsDropped != 8 {
		t.Errorf("harsh cut kept %d and dropped %d of 8 creates", stats.DirOpsKept, stats.DirOpsDropped)
	}
	// Each page holds the old or the new content; the torn one, new then old.
	got, torn := tree["f"], 0
	if len(got) != len(old) {
		t.Fatalf("f has %d bytes, want %d", len(got), len(old))
	}
	var kept int64
	for i := range pages {
		p := got[i*4096 : (i+1)*4096]
		n := strings.Count(p, "b")
		kept += int64(n)
		if n > 0 && n < 4096 {
			torn++
			if p != strings.Repeat("b", n)+strings.Repeat("a", 4096-n) {
				t.Errorf("page %d is torn but not a prefix of the write", i)
			}
		}
	}
	if kept != stats.BytesKept || torn > 1 {
		t.Errorf("f holds %d new bytes in %d torn pages; stats say %d kept", kept, torn, stats.BytesKept)
	}
	// A create kept is a prefix of the creates, in order.
	for i := range 8 {
		_, ok := tree[fmt.Sprintf("new%d", i)]
		if ok != (i < stats.DirOpsKept) {
			t.Errorf("new%d kept = %v, but %d creates were kept", i, ok, stats.DirOpsKept)
		}
	}
}

func TestCapacityFailsWritesWithENOSPC(t *testing.T) {
	const capacity = 256 << 10
	fx := mountTree(t, 1, nil)
	fx.fs.SetCapacity(capacity)
	free := func() int64 {
		var st unix.Statfs_t
		must(t, unix.Statfs(fx.mnt, &st))
		if total := int64(st.Blocks) * st.Bsize; total != capacity {
			t.Errorf("statfs reports %d bytes in all, want %d", total, capacity)
		}
		return int64(st.Bavail) * st.Bsize
	}
	if got := free(); got != capacity {
		t.Errorf("free on an empty filesystem = %d, want %d", got, capacity)
	}
	writeFile(t, fx.path("a"), strings.Repeat("a", 128<<10), 0, false)
	if got := free(); got != capacity-128<<10 {
		t.Errorf("free after writing 128 KiB = %d, want %d", got, capacity-128<<10)
	}

	f, err := os.Create(fx.path("b"))
	must(t, err)
	defer f.Close()
	// Growing a file allocates nothing, as on a disk.
	must(t, f.Truncate(1<<30))
	if got := free(); got != capacity-128<<10 {
		t.Errorf("free after a 1 GiB ftruncate = %d, want %d", got, capacity-128<<10)
	}
	if _, err := f.WriteAt(make([]byte, 192<<10), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing 192 KiB into 128 KiB free: got %v, want ENOSPC", err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 192<<10); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("fallocating 192 KiB into 128 KiB free: got %v, want ENOSPC", err)
	}

	must(t, os.Remove(fx.path("a")))
	if got := free(); got != capacity {
		t.Errorf("free after removing the file = %d, want %d", got, capacity)
	}
	if _, err := f.WriteAt(make([]byte, 192<<10), 0); err != nil {
		t.Errorf("writing 192 KiB once space is back: %v", err)
	}
	if got := free(); got != capacity-192<<10 {
		t.Errorf("free after writing 192 KiB = %d, want %d", got, capacity-192<<10)
	}
	must(t, f.Truncate(0))
	if got := free(); got != capacity {
		t.Errorf("free after truncating to 0 = %d, want %d", got, capacity)
	}
}

// TestFsyncOfANewFileKeepsItsNameByDefault: without StrictDirectories,
// fsyncing a new file makes durable its name and the new directories above
// it, as a journaling filesystem does; a rename still needs its directory.
func TestFsyncOfANewFileKeepsItsNameByDefault(t *testing.T) {
	needFUSE(t)
	fx := &fixture{dir: t.TempDir(), mnt: t.TempDir(), journaling: true}
	writeTree(t, fx.dir, map[string]string{"old": "o"})
	fx.remount(t, 1)
	must(t, os.MkdirAll(fx.path("new/deeper"), 0o755))
	writeFile(t, fx.path("new/deeper/synced"), "kept", 0, true)
	writeFile(t, fx.path("unsynced"), "lost", 0, false)
	must(t, os.Rename(fx.path("old"), fx.path("renamed")))
	fx.cut(t, Clean)
	wantTree(t, fx.dir, map[string]string{"old": "o", "new/": "", "new/deeper/": "", "new/deeper/synced": "kept"})
}
