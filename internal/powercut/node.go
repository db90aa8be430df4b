package powercut

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is a go-fuse loopback node that tells the model about every change
// and fails every operation with EIO once Cut froze the filesystem. It
// overrides each operation LoopbackNode implements, so that none bypasses
// the freeze.
type node struct {
	*fs.LoopbackNode
	pc *FS
}

var (
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeStatxer        = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeReaddirer      = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.FileReader         = (*handle)(nil)
	_ fs.FileWriter         = (*handle)(nil)
	_ fs.FileWritever       = (*handle)(nil)
	_ fs.FileFsyncer        = (*handle)(nil)
	_ fs.FileFlusher        = (*handle)(nil)
	_ fs.FileReleaser       = (*handle)(nil)
	_ fs.FileGetattrer      = (*handle)(nil)
	_ fs.FileAllocater      = (*handle)(nil)
	_ fs.FileLseeker        = (*handle)(nil)
	_ fs.FileReaddirenter   = (*dirHandle)(nil)
	_ fs.FileSeekdirer      = (*dirHandle)(nil)
	_ fs.FileReleasedirer   = (*dirHandle)(nil)
	_ fs.FileFsyncdirer     = (*dirHandle)(nil)
)

// WrapChild makes every node of the tree a node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), pc: n.pc}
}

// self is this node's inode in the model.
func (n *node) self() *minode {
	if n.IsRoot() {
		return n.pc.root
	}
	return n.pc.minodeFor(n.StableAttr().Ino, n.StableAttr().Mode)
}

func (n *node) livePath() string { return filepath.Join(n.pc.live, n.Path(nil)) }

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	return n.pc.statfs(out)
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	return n.LoopbackNode.Lookup(ctx, name, out)
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	return n.LoopbackNode.Getattr(ctx, f, out)
}

func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags, mask uint32, out *fuse.StatxOut) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	if h, ok := f.(*handle); ok {
		var st unix.Statx_t
		if err := unix.Statx(int(h.f.Fd()), "", int(flags)|unix.AT_EMPTY_PATH, int(mask), &st); err != nil {
			return errnoOf(err)
		}
		out.FromStatx(&st)
		return 0
	}
	return n.LoopbackNode.Statx(ctx, nil, flags, mask, out)
}

// Setattr applies a truncate through the model; chmod, chown and utimens
// pass through (the mode is remembered, for the files a Cut leaves).
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	m := n.self()
	h, _ := f.(*handle)
	fd, path := -1, n.livePath()
	if h != nil {
		fd = int(h.f.Fd())
		// Reach the file by descriptor even when it has no name left.
		path = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	if size, ok := in.GetSize(); ok {
		if m.kind != kindFile {
			return syscall.EINVAL
		}
		if errno := n.pc.truncate(m, fd, path, int64(size)); errno != 0 {
			return errno
		}
	}
	if mode, ok := in.GetMode(); ok {
		if err := syscall.Chmod(path, mode); err != nil {
			return errnoOf(err)
		}
		n.pc.mu.Lock()
		m.mode = m.mode&syscall.S_IFMT | mode&0o7777
		n.pc.mu.Unlock()
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		suid, sgid := -1, -1
		if uok {
			suid = int(uid)
		}
		if gok {
			sgid = int(gid)
		}
		flags := unix.AT_SYMLINK_NOFOLLOW
		if h != nil {
			flags = 0
		}
		if err := unix.Fchownat(unix.AT_FDCWD, path, suid, sgid, flags); err != nil {
			return errnoOf(err)
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		flags := unix.AT_SYMLINK_NOFOLLOW
		if h != nil {
			flags = 0
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, flags); err != nil {
			return errnoOf(err)
		}
	}
	var st syscall.Stat_t
	var err error
	if h != nil {
		err = syscall.Fstat(fd, &st)
	} else {
		err = syscall.Lstat(path, &st)
	}
	if err != nil {
		return errnoOf(err)
	}
	out.FromStat(&st)
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, 0, errno
	}
	defer n.pc.leave()
	// The kernel sends O_TRUNC as a SETATTR first (go-fuse does not ask for
	// atomic O_TRUNC); strip it anyway, so a truncate always goes through
	// the model.
	lf, fuseFlags, errno := n.LoopbackNode.Open(ctx, flags&^syscall.O_TRUNC)
	if errno != 0 {
		return nil, 0, errno
	}
	m := n.self()
	h, errno := n.pc.newHandle(ctx, lf, m)
	if errno != 0 {
		return nil, 0, errno
	}
	if flags&syscall.O_TRUNC != 0 {
		if errno := n.pc.truncate(m, int(h.f.Fd()), "", 0); errno != 0 {
			h.Release(ctx)
			return nil, 0, errno
		}
	}
	return h, fuseFlags, 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, nil, 0, errno
	}
	defer n.pc.leave()
	ch, lf, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags&^syscall.O_TRUNC, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	m := n.pc.created(n.self(), name, ch, out)
	h, errno := n.pc.newHandle(ctx, lf, m)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ch, h, fuseFlags, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	ch, errno := n.LoopbackNode.Mkdir(ctx, name, mode, out)
	if errno == 0 {
		n.pc.created(n.self(), name, ch, out)
	}
	return ch, errno
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	ch, errno := n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	if errno == 0 {
		n.pc.created(n.self(), name, ch, out).rdev = rdev
	}
	return ch, errno
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	ch, errno := n.LoopbackNode.Symlink(ctx, target, name, out)
	if errno == 0 {
		m := n.pc.created(n.self(), name, ch, out)
		n.pc.mu.Lock()
		m.target = target
		n.pc.mu.Unlock()
	}
	return ch, errno
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno == 0 {
		t := target.EmbeddedInode()
		m := n.pc.minodeFor(t.StableAttr().Ino, t.StableAttr().Mode)
		d := n.self()
		n.pc.mu.Lock()
		n.pc.added(d, name, m)
		n.pc.mu.Unlock()
	}
	return ch, errno
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	errno := n.LoopbackNode.Unlink(ctx, name)
	if errno == 0 {
		d := n.self()
		n.pc.mu.Lock()
		n.pc.unlinked(d, name)
		n.pc.mu.Unlock()
	}
	return errno
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	errno := n.LoopbackNode.Rmdir(ctx, name)
	if errno == 0 {
		d := n.self()
		n.pc.mu.Lock()
		n.pc.unlinked(d, name)
		n.pc.mu.Unlock()
	}
	return errno
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if errno := n.pc.enter(); errno != 0 {
		return errno
	}
	defer n.pc.leave()
	if flags&unix.RENAME_WHITEOUT != 0 {
		return syscall.EINVAL // not modelled
	}
	errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	if errno == 0 {
		d := n.self()
		d2 := d
		if np, ok := newParent.(*node); ok {
			d2 = np.self()
		}
		n.pc.mu.Lock()
		n.pc.renamed(d, name, d2, newName, flags&unix.RENAME_EXCHANGE != 0)
		n.pc.mu.Unlock()
	}
	return errno
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	return n.LoopbackNode.Readlink(ctx)
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, 0, errno
	}
	defer n.pc.leave()
	fh, fuseFlags, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	// go-fuse sends FSYNCDIR to the handle when it implements
	// FileFsyncdirer, as the loopback's does (an fsync of the backing
	// directory): wrap it so FSYNCDIR reaches the model.
	d := &dirHandle{pc: n.pc, m: n.self(), ds: fh.(fs.DirStream)}
	n.pc.mu.Lock()
	n.pc.dirs[d] = struct{}{}
	d.m.opens++
	n.pc.mu.Unlock()
	return d, fuseFlags, 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if errno := n.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer n.pc.leave()
	return n.LoopbackNode.Readdir(ctx)
}

// CopyFileRange answers ENOSYS: the kernel remembers it and copies through
// READ and WRITE, which the model sees.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut, length, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

// Tmpfile answers ENOSYS, so O_TMPFILE fails with EOPNOTSUPP: not modelled.
func (n *node) Tmpfile(ctx context.Context, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.ENOSYS
}

// Extended attributes are not modelled (and DisableXAttrs keeps the kernel
// from asking).
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENOTSUP
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.ENOTSUP
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return 0, 0
}

// created registers the inode a create, mkdir, mknod or symlink just made as
// d/name.
func (f *FS) created(d *minode, name string, ch *fs.Inode, out *fuse.EntryOut) *minode {
	f.mu.Lock()
	defer f.mu.Unlock()
	ino := ch.StableAttr().Ino
	if m := d.live[name]; m != nil && m.ino == ino {
		return m // O_CREAT without O_EXCL found the file there
	}
	m := f.newMinode(ch.StableAttr().Mode&syscall.S_IFMT | out.Attr.Mode&0o7777)
	m.ino = ino
	// A new inode may reuse the number of one deleted: the old one lives on
	// in the model as long as something durable names it.
	f.byIno[ino] = m
	f.added(d, name, m)
	return m
}

// handle is an open file. It is not go-fuse's LoopbackFile, whose
// PassthroughFd would let the kernel bypass us.
type handle struct {
	pc *FS
	m  *minode
	f  *os.File
}

// newHandle takes over the descriptor of lf, a LoopbackFile.
func (f *FS) newHandle(ctx context.Context, lf fs.FileHandle, m *minode) (*handle, syscall.Errno) {
	file, errno := adopt(ctx, lf)
	if errno != 0 {
		return nil, errno
	}
	h := &handle{pc: f, m: m, f: file}
	f.mu.Lock()
	f.handles[h] = struct{}{}
	m.opens++
	f.mu.Unlock()
	return h, 0
}

// adopt takes the descriptor out of lf, a LoopbackFile, and releases lf.
func adopt(ctx context.Context, lf fs.FileHandle) (*os.File, syscall.Errno) {
	defer lf.(fs.FileReleaser).Release(ctx)
	fd, ok := lf.(fs.FilePassthroughFder).PassthroughFd()
	if !ok {
		return nil, syscall.EBADF
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, errnoOf(err)
	}
	return os.NewFile(uintptr(dup), "live"), 0
}

func (h *handle) fd() int { return int(h.f.Fd()) }

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if errno := h.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer h.pc.leave()
	n, err := unix.Pread(h.fd(), dest, off)
	if err != nil {
		return nil, errnoOf(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := h.pc.enter(); errno != 0 {
		return 0, errno
	}
	defer h.pc.leave()
	return h.pc.write(h.m, h.fd(), off, int64(len(data)), func() (int, error) {
		return unix.Pwrite(h.fd(), data, off)
	})
}

func (h *handle) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if errno := h.pc.enter(); errno != 0 {
		return 0, errno
	}
	defer h.pc.leave()
	var n int64
	for _, b := range data {
		n += int64(len(b))
	}
	return h.pc.write(h.m, h.fd(), off, n, func() (int, error) {
		return unix.Pwritev(h.fd(), data, off)
	})
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if errno := h.pc.enter(); errno != 0 {
		return errno
	}
	defer h.pc.leave()
	return h.pc.fsync(h.m)
}

// Flush is close(2). Nothing to do: locks are the kernel's.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if errno := h.pc.enter(); errno != 0 {
		return errno
	}
	defer h.pc.leave()
	return 0
}

// Release closes the descriptor, also after a freeze: it changes nothing
// durable.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.pc.mu.Lock()
	defer h.pc.mu.Unlock()
	if _, ok := h.pc.handles[h]; !ok {
		return 0
	}
	delete(h.pc.handles, h)
	h.f.Close()
	h.m.opens--
	h.pc.maybeFree(h.m)
	return 0
}

// Getattr serves node.Getattr, which already entered.
func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(h.fd(), &st); err != nil {
		return errnoOf(err)
	}
	out.FromStat(&st)
	return 0
}

func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	if errno := h.pc.enter(); errno != 0 {
		return errno
	}
	defer h.pc.leave()
	return h.pc.fallocate(h.m, h.fd(), int64(off), int64(size), mode)
}

func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	if errno := h.pc.enter(); errno != 0 {
		return 0, errno
	}
	defer h.pc.leave()
	n, err := unix.Seek(h.fd(), int64(off), int(whence))
	if err != nil {
		return 0, errnoOf(err)
	}
	return uint64(n), 0
}

// dirHandle is an open directory.
type dirHandle struct {
	pc *FS
	m  *minode
	ds fs.DirStream // go-fuse's loopback stream
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if errno := d.pc.enter(); errno != 0 {
		return nil, errno
	}
	defer d.pc.leave()
	return d.ds.(fs.FileReaddirenter).Readdirent(ctx)
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if errno := d.pc.enter(); errno != 0 {
		return errno
	}
	defer d.pc.leave()
	return d.ds.(fs.FileSeekdirer).Seekdir(ctx, off)
}

// Fsyncdir is FSYNCDIR: the directory's entries become durable.
func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if errno := d.pc.enter(); errno != 0 {
		return errno
	}
	defer d.pc.leave()
	d.pc.syncDir(d.m)
	return 0
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.pc.mu.Lock()
	defer d.pc.mu.Unlock()
	if _, ok := d.pc.dirs[d]; !ok {
		return
	}
	delete(d.pc.dirs, d)
	d.ds.Close()
	d.m.opens--
	d.pc.maybeFree(d.m)
}
