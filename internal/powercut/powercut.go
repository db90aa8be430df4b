package powercut

import (
	"errors"
	"fmt"
	"log"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Cut when the filesystem was already cut or
// unmounted.
var ErrClosed = errors.New("powercut: already cut or unmounted")

const (
	fusectlDir   = "/sys/fs/fuse/connections"
	fusectlMagic = 0x65735543 // FUSE_CTL_SUPER_MAGIC
)

// Options configure Mount.
type Options struct {
	// Dir holds the filesystem's content between mounts. Everything in it
	// when Mount is called counts as durable. While mounted, its content is
	// moved into a work directory beside it (Dir's parent directory must be
	// writable) and Dir is empty; after Cut it holds what a disk would hold
	// after the power loss, after Unmount everything that was written.
	// Required.
	Dir string

	// Mountpoint is where the filesystem is mounted. It may be Dir itself
	// but not inside it, nor contain it. Required.
	Mountpoint string

	// Seed makes Harsh cuts reproducible: the same operations and the same
	// seed lose the same data. Zero is a valid seed.
	Seed uint64

	// StrictDirectories makes a new file's name durable only once its
	// directory is fsynced, as POSIX alone promises. False, the default,
	// models ext4, XFS and btrfs: fsyncing a new file also makes durable
	// the entries that created it and the new directories above it.
	// Renames and removals need the directory fsynced either way. Badger
	// relies on the default: it fsyncs the tables and logs it creates, not
	// their directory.
	StrictDirectories bool

	// Logf, if set, receives lifecycle messages and go-fuse's diagnostics.
	// Nil discards them.
	Logf func(format string, args ...any)
}

// Mode says how much of what was not made durable a Cut loses.
type Mode int

const (
	// Clean drops everything not made durable by an fsync: the strictest
	// disk POSIX allows.
	Clean Mode = iota
	// Harsh models a disk that wrote some things back before losing power:
	// per file, a random subset of the unsynced 4 KiB pages survives and one
	// unsynced write survives only as a prefix (a torn write); a random
	// prefix, in operation order, of the unsynced directory changes
	// survives. The choices follow Options.Seed.
	Harsh
)

// String returns "clean" or "harsh".
func (m Mode) String() string {
	switch m {
	case Clean:
		return "clean"
	case Harsh:
		return "harsh"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Stats describe what a Cut lost and, in Harsh mode, kept anyway.
type Stats struct {
	// FilesUnsynced is how many files had data or a size change that no
	// fsync had made durable.
	FilesUnsynced int
	// BytesDropped is how many bytes written (or zeroed by fallocate) but not
	// fsynced were lost.
	BytesDropped int64
	// BytesKept is how many such bytes Harsh mode kept; always 0 for Clean.
	BytesKept int64
	// TornWrites is how many writes Harsh mode kept only a prefix of.
	TornWrites int
	// DirOpsDropped is how many directory changes (create, link, remove,
	// rename) were lost because a directory they changed was not fsynced
	// after them.
	DirOpsDropped int
	// DirOpsKept is how many such changes Harsh mode kept; always 0 for
	// Clean.
	DirOpsKept int
}

// FS is a mounted power-cut filesystem. Its methods are safe for concurrent
// use; Cut and Unmount end it.
type FS struct {
	opts    Options
	logf    func(string, ...any)
	work    string // work directory beside Options.Dir
	live    string // what the mount passes through to
	stores  string // durable content of files, one per inode: stores/<id>
	conn    string // /sys/fs/fuse/connections/<dev>
	server  *fuse.Server
	cap     atomic.Int64
	lifeMu  sync.Mutex // serializes Cut and Unmount
	closed  bool       // under lifeMu
	fsyncs  atomic.Int64
	opMu    sync.RWMutex // held shared by every operation, exclusively to freeze
	frozen  bool         // under opMu
	mu      sync.Mutex   // guards the model (see model.go)
	root    *minode
	inodes  map[uint64]*minode // by id
	byIno   map[uint64]*minode // live st_ino → inode currently holding it
	nextID  uint64
	seq     uint64 // directory operations so far
	ops     []*dirOp
	used    int64 // bytes of 4 KiB pages allocated in live files
	handles map[*handle]struct{}
	dirs    map[*dirHandle]struct{}
}

// Available reports nil when a FUSE filesystem can be mounted and aborted
// here, else why not. It needs root (for a direct mount and to abort the
// connection), /dev/fuse, and the fusectl filesystem on
// /sys/fs/fuse/connections, which it mounts when missing.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("powercut: needs root to mount FUSE directly and abort its connection")
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("powercut: open /dev/fuse: %w", err)
	}
	unix.Close(fd)
	if fusectlMounted() {
		return nil
	}
	if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !fusectlMounted() {
		return fmt.Errorf("powercut: mount fusectl on %s: %w", fusectlDir, err)
	}
	return nil
}

func fusectlMounted() bool {
	var st unix.Statfs_t
	return unix.Statfs(fusectlDir, &st) == nil && st.Type == fusectlMagic
}

// Mount moves the content of opts.Dir aside, counts it all as durable, and
// mounts a filesystem on opts.Mountpoint that shows it and applies every
// operation at once, while remembering what an fsync made durable.
func Mount(opts Options) (*FS, error) {
	f, err := mount(opts)
	if err != nil {
		return nil, fmt.Errorf("mount powercut: %w", err)
	}
	return f, nil
}

func mount(opts Options) (*FS, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	mnt, err := filepath.Abs(opts.Mountpoint)
	if err != nil {
		return nil, err
	}
	for _, p := range []string{dir, mnt} {
		if fi, err := os.Stat(p); err != nil {
			return nil, err
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("%s is not a directory", p)
		}
	}
	if dir != mnt && (within(dir, mnt) || within(mnt, dir)) {
		return nil, fmt.Errorf("dir %s and mountpoint %s are nested", dir, mnt)
	}
	opts.Dir, opts.Mountpoint = dir, mnt
	work, err := os.MkdirTemp(filepath.Dir(dir), ".powercut-"+filepath.Base(dir)+"-")
	if err != nil {
		return nil, err
	}
	f := &FS{
		opts:    opts,
		logf:    opts.Logf,
		work:    work,
		live:    filepath.Join(work, "live"),
		stores:  filepath.Join(work, "stores"),
		inodes:  map[uint64]*minode{},
		byIno:   map[uint64]*minode{},
		handles: map[*handle]struct{}{},
		dirs:    map[*dirHandle]struct{}{},
	}
	if f.logf == nil {
		f.logf = func(string, ...any) {}
	}
	if err := f.load(); err != nil {
		return nil, errors.Join(err, f.restore())
	}
	if err := f.serve(); err != nil {
		return nil, errors.Join(err, f.restore())
	}
	f.logf("powercut: mounted %s on %s (%d bytes in use, fuse connection %s)", dir, mnt, f.Used(), f.conn)
	return f, nil
}

// within reports whether p is inside dir.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// restore puts the durable state back into Options.Dir after a failed Mount.
func (f *FS) restore() error {
	err := f.materialise(f.opts.Dir)
	f.closeFiles()
	return errors.Join(err, os.RemoveAll(f.work))
}

func (f *FS) serve() error {
	rootData := &fs.LoopbackRoot{Path: f.live}
	var st unix.Stat_t
	if err := unix.Stat(f.live, &st); err != nil {
		return err
	}
	rootData.Dev = st.Dev
	root := &node{LoopbackNode: &fs.LoopbackNode{RootData: rootData}, pc: f}
	rootData.RootNode = root

	logger := log.New(logWriter(f.logf), "go-fuse: ", 0)
	timeout := time.Second
	server, err := fs.Mount(f.opts.Mountpoint, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: "powercut",
			Name:   "powercut",
			// Root mounts with mount(2): no fusermount (Debian's fuse3) is
			// needed, and Unmount reports EBUSY instead of a fusermount error.
			// Without allow_other only the mounting uid may enter; root's
			// children (the binary under test) run as root too.
			DirectMountStrict: true,
			// Not modelled: every xattr request answers ENOTSUP at once.
			DisableXAttrs: true,
			// Passthrough would let the kernel write to the live files
			// without telling us.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			MaxWrite:             1 << 20,
			Logger:               logger,
		},
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		Logger:       logger,
	})
	if err != nil {
		return err
	}
	f.server = server
	// The connection's directory in fusectl is named by the device number
	// the kernel gave the mount, which stat reports.
	if err := unix.Stat(f.opts.Mountpoint, &st); err != nil {
		return errors.Join(err, server.Unmount())
	}
	f.conn = filepath.Join(fusectlDir, fmt.Sprint(unix.Major(st.Dev)<<20|unix.Minor(st.Dev)))
	if _, err := os.Stat(filepath.Join(f.conn, "abort")); err != nil {
		return errors.Join(fmt.Errorf("find fuse connection: %w", err), server.Unmount())
	}
	return nil
}

// SetCapacity makes the filesystem hold at most bytes of file data (0, the
// default, means unlimited): a write, fallocate or truncate that would need
// more 4 KiB pages than are free fails with ENOSPC, and statfs reports the
// capacity and what is free. Pages count once written or allocated, as on a
// disk: growing a file with ftruncate allocates nothing. Removing a file (the
// last name and the last open descriptor) frees its pages. Lowering the
// capacity below what is in use fails later allocations only.
func (f *FS) SetCapacity(bytes int64) {
	f.cap.Store(max(0, bytes))
}

// Used reports how many bytes of file data the filesystem holds, counted in
// 4 KiB pages: what SetCapacity is compared with.
func (f *FS) Used() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used
}

// Cut cuts the power. It freezes the filesystem (every operation from then
// on fails with EIO, so nothing more becomes durable), calls kill (which
// should kill the processes using the mount and wait for them; nil skips
// it), aborts the FUSE connection so that no dirty page the kernel still
// holds reaches us, unmounts (lazily when busy), and leaves in Options.Dir
// what a disk would hold after the power loss, as mode says. The returned
// error joins kill's error with any of Cut's own; Stats are valid even then.
func (f *FS) Cut(mode Mode, kill func() error) (Stats, error) {
	f.lifeMu.Lock()
	defer f.lifeMu.Unlock()
	if f.closed {
		return Stats{}, ErrClosed
	}
	f.closed = true

	f.opMu.Lock()
	f.frozen = true
	f.opMu.Unlock()

	var errs []error
	if kill != nil {
		if err := kill(); err != nil {
			errs = append(errs, fmt.Errorf("kill: %w", err))
		}
	}
	aborted := true
	if err := os.WriteFile(filepath.Join(f.conn, "abort"), []byte("1"), 0); err != nil {
		aborted = false
		errs = append(errs, fmt.Errorf("abort fuse connection: %w", err))
	}
	err := unix.Unmount(f.opts.Mountpoint, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(f.opts.Mountpoint, unix.MNT_DETACH)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("unmount: %w", err))
	}
	if aborted || err == nil {
		// The serve loops have exited, or will now: the device answers ENODEV.
		f.server.Wait()
	}
	f.closeHandles()

	// No operation touches the model now (each fails with EIO, and a late
	// RELEASE finds its handle closed), but a handler goroutine may still be
	// finishing: hold the lock anyway.
	f.mu.Lock()
	stats, err := f.loseUnsynced(mode)
	if err != nil {
		errs = append(errs, err)
	}
	if err := f.materialise(f.opts.Dir); err != nil {
		errs = append(errs, fmt.Errorf("materialise: %w", err))
	}
	f.closeFiles()
	f.mu.Unlock()
	if err := os.RemoveAll(f.work); err != nil {
		errs = append(errs, err)
	}
	f.logf("powercut: %s cut of %s: %+v", mode, f.opts.Dir, stats)
	if len(errs) > 0 {
		return stats, fmt.Errorf("cut powercut: %w", errors.Join(errs...))
	}
	return stats, nil
}

// Unmount unmounts cleanly, like a shutdown that syncs first: Options.Dir
// then holds everything written, durable or not. It fails, leaving the
// filesystem mounted, while a process holds a file open on it. Calling it
// after Cut or Unmount does nothing.
func (f *FS) Unmount() error {
	f.lifeMu.Lock()
	defer f.lifeMu.Unlock()
	if f.closed {
		return nil
	}
	// The kernel writes dirty pages back before the unmount completes, and
	// go-fuse waits for its serve loops.
	if err := f.server.Unmount(); err != nil {
		return fmt.Errorf("unmount powercut: %w", err)
	}
	f.closed = true
	f.closeHandles()
	f.closeFiles()
	var errs []error
	entries, err := os.ReadDir(f.live)
	if err != nil {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if err := move(filepath.Join(f.live, e.Name()), filepath.Join(f.opts.Dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(f.work); err != nil {
		errs = append(errs, err)
	}
	f.logf("powercut: unmounted %s", f.opts.Mountpoint)
	if len(errs) > 0 {
		return fmt.Errorf("unmount powercut: %w", errors.Join(errs...))
	}
	return nil
}

// enter starts an operation: it fails with EIO once Cut has frozen the
// filesystem. Every successful enter is paired with a leave.
func (f *FS) enter() syscall.Errno {
	f.opMu.RLock()
	if f.frozen {
		f.opMu.RUnlock()
		return syscall.EIO
	}
	return 0
}

func (f *FS) leave() { f.opMu.RUnlock() }

// closeHandles closes the descriptors of open files and directories, which
// after an abort no RELEASE will ever close.
func (f *FS) closeHandles() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h := range f.handles {
		h.f.Close()
	}
	clear(f.handles)
	for d := range f.dirs {
		d.ds.Close()
	}
	clear(f.dirs)
}

// logWriter adapts Options.Logf to log.Logger.
type logWriter func(string, ...any)

func (w logWriter) Write(p []byte) (int, error) {
	w("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// statfs fills out for a capacity-limited filesystem.
func (f *FS) statfs(out *fuse.StatfsOut) syscall.Errno {
	capacity := f.cap.Load()
	if capacity == 0 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(f.live, &st); err != nil {
			return fs.ToErrno(err)
		}
		out.FromStatfsT(&st)
		return 0
	}
	f.mu.Lock()
	used, files := f.used, uint64(len(f.inodes))
	f.mu.Unlock()
	free := max(0, capacity-used)
	*out = fuse.StatfsOut{
		Blocks:  uint64(capacity / pageSize),
		Bfree:   uint64(free / pageSize),
		Bavail:  uint64(free / pageSize),
		Files:   math.MaxUint32,
		Ffree:   math.MaxUint32 - files,
		Bsize:   pageSize,
		NameLen: 255,
		Frsize:  pageSize,
	}
	return 0
}
