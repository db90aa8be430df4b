package powercut

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The model. Every inode of the live tree has a minode, found by the live
// file's st_ino (stable across renames), which records what of it is
// durable:
//
//   - a directory's durable entries are a copy of its live entries taken at
//     its last FSYNCDIR;
//   - a file's durable content is stores/<id>, brought up to date at each
//     FSYNC by copying the byte ranges written since the previous one (and
//     the size). A file present at Mount has no copy until it is first
//     changed: stores/<id> is then a hard link to the live file.
//
// Directory changes not yet covered by an FSYNCDIR of every directory they
// touched stay in FS.ops, in order, for Harsh mode to replay a prefix of.
//
// Locking: FS.opMu (shared) → minode.ioMu → FS.mu. FS.mu guards the fields
// marked so and FS's maps; ioMu guards a file's data fields. After Cut froze
// the filesystem and the server stopped, Cut reads everything unlocked.

type kind uint8

const (
	kindFile kind = iota
	kindDir
	kindSymlink
	kindOther // fifo, socket, device
)

func kindOf(mode uint32) kind {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return kindFile
	case syscall.S_IFDIR:
		return kindDir
	case syscall.S_IFLNK:
		return kindSymlink
	}
	return kindOther
}

type minode struct {
	id   uint64
	kind kind

	// Under FS.mu.
	mode    uint32 // type and permission bits, as of creation or the last chmod
	rdev    uint32 // kindOther
	target  string // kindSymlink
	ino     uint64 // live st_ino
	live    map[string]*minode
	durable map[string]*minode
	syncSeq uint64  // a directory's durable entries reflect ops up to this one
	nlink   int     // live names (a directory: 1 while in the tree)
	opens   int     // open handles
	durRefs int     // durable entries naming it
	opRefs  int     // pending ops naming it
	alloc   extents // pages allocated in the live file
	freed   bool    // alloc given back: no name and no handle left
	dropped bool

	ioMu sync.Mutex
	// Under ioMu.
	shared      bool     // loaded at Mount, unchanged since: stores/<id> is a link to the live file
	hasStore    bool     // stores/<id> exists
	store       *os.File // stores/<id>, open once written to
	storeSize   int64
	rfd         *os.File // the live file, read-only, once changed
	dirty       extents  // bytes changed since the last fsync
	writes      []span   // writes since the last fsync, in order
	sizeChanged bool     // truncated or extended by fallocate since the last fsync
	minSize     int64    // smallest live size since the last fsync
	durableSize int64
}

type opKind uint8

const (
	opAdd      opKind = iota // create, mkdir, mknod, symlink, link
	opRemove                 // unlink, rmdir
	opRename                 // rename, overwriting or not
	opExchange               // rename with RENAME_EXCHANGE
)

// dirOp is a directory change not yet durable in every directory it touched.
type dirOp struct {
	seq   uint64
	kind  opKind
	dir   *minode
	name  string
	dir2  *minode // opRename, opExchange: the other directory
	name2 string
	m     *minode // what was added, removed, or moved from dir/name
	m2    *minode // opExchange: what was at dir2/name2
	// early: an opAdd made durable by an fsync of what it added, before
	// its directory was fsynced (see Options.StrictDirectories).
	early bool
}

// pendingIn reports whether d's durable entries miss op.
func (op *dirOp) pendingIn(d *minode) bool { return d != nil && d.syncSeq < op.seq && !op.early }

func (op *dirOp) pending() bool { return op.pendingIn(op.dir) || op.pendingIn(op.dir2) }

// replay applies op to the durable entries of the directories that miss it.
func (op *dirOp) replay() {
	switch op.kind {
	case opAdd:
		if op.pendingIn(op.dir) {
			op.dir.durable[op.name] = op.m
		}
	case opRemove:
		if op.pendingIn(op.dir) {
			delete(op.dir.durable, op.name)
		}
	case opRename:
		if op.pendingIn(op.dir) {
			delete(op.dir.durable, op.name)
		}
		if op.pendingIn(op.dir2) {
			op.dir2.durable[op.name2] = op.m
		}
	case opExchange:
		if op.pendingIn(op.dir) {
			op.dir.durable[op.name] = op.m2
		}
		if op.pendingIn(op.dir2) {
			op.dir2.durable[op.name2] = op.m
		}
	}
}

// newMinode registers a new inode. Caller holds f.mu.
func (f *FS) newMinode(mode uint32) *minode {
	f.nextID++
	m := &minode{id: f.nextID, kind: kindOf(mode), mode: mode}
	if m.kind == kindDir {
		m.live = map[string]*minode{}
		m.durable = map[string]*minode{}
	}
	f.inodes[m.id] = m
	return m
}

func (f *FS) storePath(m *minode) string {
	return filepath.Join(f.stores, strconv.FormatUint(m.id, 10))
}

// load moves the content of Options.Dir into the live tree, every file
// hard-linked into stores/ as its durable content.
func (f *FS) load() error {
	for _, d := range []string{f.live, f.stores} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	fi, err := os.Stat(f.opts.Dir)
	if err != nil {
		return err
	}
	if err := os.Chmod(f.live, fi.Mode().Perm()); err != nil {
		return err
	}
	f.root = f.newMinode(syscall.S_IFDIR | uint32(fi.Mode().Perm()))
	f.root.nlink = 1
	st, err := lstat(f.live)
	if err != nil {
		return err
	}
	f.root.ino = st.Ino
	f.byIno[st.Ino] = f.root
	return f.loadDir(f.opts.Dir, f.live, f.root, map[[2]uint64]string{})
}

// loadDir loads the entries of src into d, whose live directory is dst.
// links maps a (dev, ino) already loaded to its live path.
func (f *FS) loadDir(src, dst string, d *minode, links map[[2]uint64]string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		sp, dp := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		st, err := lstat(sp)
		if err != nil {
			return err
		}
		key := [2]uint64{st.Dev, st.Ino}
		var m *minode
		if prev, ok := links[key]; ok && kindOf(st.Mode) == kindFile {
			// Another name of a file already loaded.
			if err := os.Link(prev, dp); err != nil {
				return err
			}
			if err := os.Remove(sp); err != nil {
				return err
			}
			lst, err := lstat(dp)
			if err != nil {
				return err
			}
			m = f.byIno[lst.Ino]
		} else {
			m = f.newMinode(st.Mode)
			m.rdev = uint32(st.Rdev)
			switch m.kind {
			case kindDir:
				if err := os.Mkdir(dp, 0o700); err != nil {
					return err
				}
			case kindFile:
				if err := f.loadFile(m, sp, dp); err != nil {
					return err
				}
				links[key] = dp
			case kindSymlink:
				if m.target, err = os.Readlink(sp); err != nil {
					return err
				}
				if err := os.Symlink(m.target, dp); err != nil {
					return err
				}
			case kindOther:
				if err := unix.Mknod(dp, st.Mode, int(st.Rdev)); err != nil {
					return err
				}
			}
			if m.kind != kindSymlink {
				if err := os.Chmod(dp, os.FileMode(st.Mode&0o777)|modeBits(st.Mode)); err != nil {
					return err
				}
			}
			lst, err := lstat(dp)
			if err != nil {
				return err
			}
			m.ino = lst.Ino
			f.byIno[m.ino] = m
		}
		d.live[e.Name()] = m
		d.durable[e.Name()] = m
		m.nlink++
		m.durRefs++
		switch m.kind {
		case kindDir:
			if err := f.loadDir(sp, dp, m, links); err != nil {
				return err
			}
			if err := os.Remove(sp); err != nil {
				return err
			}
		case kindSymlink, kindOther:
			if err := os.Remove(sp); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadFile moves the file sp to the live path dp and makes stores/<id> its
// durable content: a hard link until the file changes, else a copy.
func (f *FS) loadFile(m *minode, sp, dp string) error {
	st, err := lstat(sp)
	if err != nil {
		return err
	}
	m.durableSize, m.minSize, m.storeSize = st.Size, st.Size, st.Size
	err = os.Link(sp, f.storePath(m))
	switch {
	case err == nil:
		m.shared, m.hasStore = true, true
	case errors.Is(err, syscall.EXDEV):
		// Options.Dir is a mount of its own: copy instead.
		if err := copyFile(sp, f.storePath(m)); err != nil {
			return err
		}
		m.hasStore = true
	default:
		return err
	}
	if err := move(sp, dp); err != nil {
		return err
	}
	lf, err := os.Open(dp)
	if err != nil {
		return err
	}
	defer lf.Close()
	data, err := dataExtents(lf, 0, st.Size)
	if err != nil {
		return err
	}
	for _, s := range data {
		f.used += m.alloc.add(pageDown(s.start), pageUp(s.end))
	}
	return nil
}

func modeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&syscall.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&syscall.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&syscall.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// logOp records a directory change. Caller holds f.mu.
func (f *FS) logOp(op *dirOp) {
	f.seq++
	op.seq = f.seq
	op.m.opRefs++
	if op.m2 != nil {
		op.m2.opRefs++
	}
	f.ops = append(f.ops, op)
}

// added records that d/name now names m in the live tree (a new inode, or a
// new link to m). Caller holds f.mu.
func (f *FS) added(d *minode, name string, m *minode) {
	if old := d.live[name]; old != nil {
		// Only a race with the backing tree gets here; keep the model sane.
		f.unlinked(d, name)
	}
	d.live[name] = m
	m.nlink++
	f.logOp(&dirOp{kind: opAdd, dir: d, name: name, m: m})
}

// unlinked records that d/name was removed. Caller holds f.mu.
func (f *FS) unlinked(d *minode, name string) {
	m := d.live[name]
	if m == nil {
		return
	}
	delete(d.live, name)
	f.logOp(&dirOp{kind: opRemove, dir: d, name: name, m: m})
	f.dropLink(m)
}

// renamed records rename(d/name, d2/name2). Caller holds f.mu.
func (f *FS) renamed(d *minode, name string, d2 *minode, name2 string, exchange bool) {
	m, victim := d.live[name], d2.live[name2]
	if m == nil {
		return
	}
	if exchange {
		if victim == nil {
			return
		}
		d.live[name], d2.live[name2] = victim, m
		f.logOp(&dirOp{kind: opExchange, dir: d, name: name, dir2: d2, name2: name2, m: m, m2: victim})
		return
	}
	if victim == m {
		return // two names of one file: rename(2) does nothing
	}
	delete(d.live, name)
	d2.live[name2] = m
	f.logOp(&dirOp{kind: opRename, dir: d, name: name, dir2: d2, name2: name2, m: m})
	if victim != nil {
		f.dropLink(victim)
	}
}

// dropLink records that m lost a live name. Caller holds f.mu.
func (f *FS) dropLink(m *minode) {
	m.nlink--
	if m.kind == kindDir {
		m.nlink = 0
	}
	f.maybeFree(m)
}

// maybeFree gives back the pages of an inode with no live name and no open
// handle, and forgets it when nothing durable or pending names it either.
// Caller holds f.mu.
func (f *FS) maybeFree(m *minode) {
	if m.nlink > 0 || m.opens > 0 || m == f.root {
		return
	}
	if !m.freed {
		m.freed = true
		f.used -= m.alloc.size()
		m.alloc = nil
	}
	f.maybeDrop(m)
}

// maybeDrop forgets an inode that nothing live, durable or pending names.
// Nothing can hold its ioMu then: that takes an open handle or a name.
// Caller holds f.mu.
func (f *FS) maybeDrop(m *minode) {
	if m.dropped || m == f.root || m.nlink > 0 || m.opens > 0 || m.durRefs > 0 || m.opRefs > 0 {
		return
	}
	m.dropped = true
	delete(f.inodes, m.id)
	if f.byIno[m.ino] == m {
		delete(f.byIno, m.ino)
	}
	if m.store != nil {
		m.store.Close()
		m.store = nil
	}
	if m.rfd != nil {
		m.rfd.Close()
		m.rfd = nil
	}
	if m.hasStore {
		os.Remove(f.storePath(m))
		m.hasStore = false
	}
	for _, c := range m.durable {
		c.durRefs--
		f.maybeDrop(c)
	}
	m.durable = nil
}

// syncDir makes d's live entries durable: FSYNCDIR.
func (f *FS) syncDir(d *minode) {
	f.fsyncs.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.kind != kindDir || d.dropped {
		return
	}
	old := d.durable
	d.durable = maps.Clone(d.live)
	for _, c := range d.durable {
		c.durRefs++
	}
	d.syncSeq = f.seq
	// Ops now durable in every directory they touched are done with.
	kept := f.ops[:0]
	var done []*minode
	for _, op := range f.ops {
		if op.pending() {
			kept = append(kept, op)
			continue
		}
		op.m.opRefs--
		done = append(done, op.m)
		if op.m2 != nil {
			op.m2.opRefs--
			done = append(done, op.m2)
		}
	}
	clear(f.ops[len(kept):])
	f.ops = kept
	for _, c := range old {
		c.durRefs--
		done = append(done, c)
	}
	for _, c := range done {
		f.maybeDrop(c)
	}
}

// minodeFor returns the inode for a live st_ino, registering one that is
// not durable anywhere if the model missed it.
func (f *FS) minodeFor(ino uint64, mode uint32) *minode {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.byIno[ino]
	if m == nil {
		f.logf("powercut: inode %d unknown to the model; treating it as never durable", ino)
		m = f.newMinode(mode)
		m.ino = ino
		m.nlink = 1
		f.byIno[ino] = m
	}
	return m
}

// prepare readies m for a change of its live content; fd is an open
// descriptor of the live file, or -1 to use path. It opens the descriptor
// fsync reads through and, for a file loaded at Mount, first copies the
// durable content aside. Caller holds m.ioMu.
func (f *FS) prepare(m *minode, fd int, path string) error {
	if m.rfd == nil {
		var err error
		if fd >= 0 {
			// The file may have no name left; /proc reopens it anyway.
			m.rfd, err = os.Open("/proc/self/fd/" + strconv.Itoa(fd))
		} else {
			m.rfd, err = os.Open(path)
		}
		if err != nil {
			return fmt.Errorf("open live file: %w", err)
		}
	}
	if !m.shared {
		return nil
	}
	tmp := f.storePath(m) + ".tmp"
	st, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := st.Truncate(m.durableSize); err != nil {
		st.Close()
		return err
	}
	if err := copyData(m.rfd, st, 0, m.durableSize); err != nil {
		st.Close()
		return err
	}
	if err := os.Rename(tmp, f.storePath(m)); err != nil {
		st.Close()
		return err
	}
	m.store, m.storeSize, m.shared = st, m.durableSize, false
	return nil
}

// allocate accounts for the pages of [start, end) in m's live file, failing
// with ENOSPC beyond the capacity.
func (f *FS) allocate(m *minode, start, end int64) syscall.Errno {
	start, end = pageDown(start), pageUp(end)
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.freed {
		return 0
	}
	grow := (end - start) - m.alloc.covered(start, end)
	if c := f.cap.Load(); c > 0 && grow > 0 && f.used+grow > c {
		return syscall.ENOSPC
	}
	m.alloc.add(start, end)
	f.used += grow
	return 0
}

// unallocate gives back the pages wholly inside [start, end).
func (f *FS) unallocate(m *minode, start, end int64) {
	start, end = pageUp(start), pageDown(end)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !m.freed {
		f.used -= m.alloc.remove(start, end)
	}
}

// write runs do, which writes n bytes at off to the live file through fd,
// and records what it wrote.
func (f *FS) write(m *minode, fd int, off, n int64, do func() (int, error)) (uint32, syscall.Errno) {
	m.ioMu.Lock()
	defer m.ioMu.Unlock()
	if err := f.prepare(m, fd, ""); err != nil {
		f.logf("powercut: write: %v", err)
		return 0, syscall.EIO
	}
	if errno := f.allocate(m, off, off+n); errno != 0 {
		return 0, errno
	}
	w, err := do()
	if w > 0 {
		m.dirty.add(off, off+int64(w))
		m.writes = append(m.writes, span{off, off + int64(w)})
	}
	if err != nil {
		return uint32(max(w, 0)), errnoOf(err)
	}
	return uint32(w), 0
}

// truncate sets the size of m's live file, through fd or else path.
func (f *FS) truncate(m *minode, fd int, path string, size int64) syscall.Errno {
	m.ioMu.Lock()
	defer m.ioMu.Unlock()
	if err := f.prepare(m, fd, path); err != nil {
		f.logf("powercut: truncate: %v", err)
		return syscall.EIO
	}
	old, err := fileSize(m.rfd)
	if err != nil {
		return errnoOf(err)
	}
	if fd >= 0 {
		err = unix.Ftruncate(fd, size)
	} else {
		err = unix.Truncate(path, size)
	}
	if err != nil {
		return errnoOf(err)
	}
	if size < old {
		// The partial page at the new end stays allocated, as on a disk.
		f.unallocate(m, pageUp(size), pageUp(old))
		m.dirty.truncate(size)
		m.writes = clipWrites(m.writes, size)
		m.minSize = min(m.minSize, size)
	}
	m.sizeChanged = true
	return 0
}

func clipWrites(ws []span, size int64) []span {
	out := ws[:0]
	for _, w := range ws {
		w.end = min(w.end, size)
		if w.start < w.end {
			out = append(out, w)
		}
	}
	return out
}

// fallocate runs fallocate(2) on m's live file.
func (f *FS) fallocate(m *minode, fd int, off, length int64, mode uint32) syscall.Errno {
	const supported = unix.FALLOC_FL_KEEP_SIZE | unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_ZERO_RANGE
	if mode&^supported != 0 {
		return syscall.EOPNOTSUPP
	}
	m.ioMu.Lock()
	defer m.ioMu.Unlock()
	if err := f.prepare(m, fd, ""); err != nil {
		f.logf("powercut: fallocate: %v", err)
		return syscall.EIO
	}
	size, err := fileSize(m.rfd)
	if err != nil {
		return errnoOf(err)
	}
	end := off + length
	punch := mode&unix.FALLOC_FL_PUNCH_HOLE != 0
	if !punch {
		if errno := f.allocate(m, off, end); errno != 0 {
			return errno
		}
	}
	if err := unix.Fallocate(fd, mode, off, length); err != nil {
		return errnoOf(err)
	}
	if punch {
		f.unallocate(m, off, end)
	}
	if punch || mode&unix.FALLOC_FL_ZERO_RANGE != 0 {
		newSize := size
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
			newSize = max(size, end)
		}
		m.dirty.add(off, min(end, newSize))
	}
	if mode&unix.FALLOC_FL_KEEP_SIZE == 0 && end > size {
		m.sizeChanged = true
	}
	return 0
}

// fsync makes m's live content durable: FSYNC (and FDATASYNC, which the
// model treats alike).
func (f *FS) fsync(m *minode) syscall.Errno {
	f.fsyncs.Add(1)
	m.ioMu.Lock()
	if !m.shared && (len(m.dirty) > 0 || m.sizeChanged) {
		if err := f.syncData(m); err != nil {
			m.ioMu.Unlock()
			f.logf("powercut: fsync: %v", err)
			return syscall.EIO
		}
	}
	m.ioMu.Unlock()
	if !f.opts.StrictDirectories {
		f.mu.Lock()
		f.persistCreation(m)
		f.mu.Unlock()
	}
	return 0
}

// persistCreation makes durable the entries that created m, and those
// that created the directories holding them, as ext4, XFS and btrfs do
// when a new file is fsynced: its creation is in the journal transaction
// the fsync commits. Caller holds f.mu.
func (f *FS) persistCreation(m *minode) {
	for _, op := range f.ops {
		if op.kind != opAdd || op.m != m || !op.pendingIn(op.dir) {
			continue
		}
		if old := op.dir.durable[op.name]; old != m {
			if old != nil {
				old.durRefs--
				f.maybeDrop(old)
			}
			op.dir.durable[op.name] = m
			m.durRefs++
		}
		op.early = true
		f.persistCreation(op.dir)
	}
}

func (f *FS) syncData(m *minode) error {
	size, err := fileSize(m.rfd)
	if err != nil {
		return err
	}
	st, err := f.openStore(m)
	if err != nil {
		return err
	}
	// Bytes past the smallest size since the last fsync are zero unless
	// written since, and then they are dirty.
	if m.minSize < m.storeSize {
		if err := st.Truncate(m.minSize); err != nil {
			return err
		}
		m.storeSize = m.minSize
	}
	if size != m.storeSize {
		if err := st.Truncate(size); err != nil {
			return err
		}
		m.storeSize = size
	}
	for _, s := range m.dirty.intersect(0, size) {
		if err := copyData(m.rfd, st, s.start, s.end); err != nil {
			return err
		}
	}
	m.durableSize, m.minSize = size, size
	m.dirty, m.writes, m.sizeChanged = nil, nil, false
	return nil
}

// openStore opens stores/<id>, creating it with the durable size.
func (f *FS) openStore(m *minode) (*os.File, error) {
	if m.store != nil {
		return m.store, nil
	}
	st, err := os.OpenFile(f.storePath(m), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if !m.hasStore {
		if err := st.Truncate(m.durableSize); err != nil {
			st.Close()
			return nil, err
		}
	}
	fi, err := st.Stat()
	if err != nil {
		st.Close()
		return nil, err
	}
	m.store, m.hasStore, m.storeSize = st, true, fi.Size()
	return st, nil
}

// errnoOf turns an error from a system call into the errno FUSE answers.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}
