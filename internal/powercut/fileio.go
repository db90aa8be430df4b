package powercut

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

func lstat(path string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return &st, nil
}

func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// dataExtents lists the ranges of [start, end) of f that hold data, as
// SEEK_DATA and SEEK_HOLE see them. It moves f's offset.
func dataExtents(f *os.File, start, end int64) (extents, error) {
	fd := int(f.Fd())
	var out extents
	for pos := start; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
		}
		if data >= end {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
		}
		hole = min(hole, end)
		out.add(data, hole)
		pos = hole
	}
	return out, nil
}

// copyData makes [start, end) of dst what it is in src, keeping holes holes.
// It moves src's offset.
func copyData(src, dst *os.File, start, end int64) error {
	data, err := dataExtents(src, start, end)
	if err != nil {
		return err
	}
	pos := start
	for _, s := range append(data, span{end, end}) {
		if s.start > pos {
			if err := zero(dst, pos, s.start); err != nil {
				return err
			}
		}
		if err := copyRange(src, dst, s.start, s.end); err != nil {
			return err
		}
		pos = s.end
	}
	return nil
}

// zero makes [start, end) of f a hole, or zeros where holes are not
// supported.
func zero(f *os.File, start, end int64) error {
	size, err := fileSize(f)
	if err != nil {
		return err
	}
	end = min(end, size) // past the end is zero already
	if start >= end {
		return nil
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		if err != nil {
			return &os.PathError{Op: "punch hole", Path: f.Name(), Err: err}
		}
		return nil
	}
	buf := make([]byte, min(end-start, 1<<20))
	for pos := start; pos < end; {
		n, err := f.WriteAt(buf[:min(int64(len(buf)), end-pos)], pos)
		if err != nil {
			return err
		}
		pos += int64(n)
	}
	return nil
}

// copyRange copies [start, end) from src to dst at the same offsets, in the
// kernel when it can. It stops early where src ends.
func copyRange(src, dst *os.File, start, end int64) error {
	for pos := start; pos < end; {
		in, out := pos, pos
		n, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(min(end-pos, 1<<30)), 0)
		if err == nil {
			if n == 0 {
				return nil
			}
			pos += int64(n)
			continue
		}
		if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
			return &os.PathError{Op: "copy_file_range", Path: src.Name(), Err: err}
		}
		_, err = io.Copy(io.NewOffsetWriter(dst, pos), io.NewSectionReader(src, pos, end-pos))
		return err
	}
	return nil
}

// copyFile copies the regular file src to a new file dst, keeping holes.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	err = out.Truncate(fi.Size())
	if err == nil {
		err = copyData(in, out, 0, fi.Size())
	}
	return errors.Join(err, out.Close())
}

// move renames src to dst, copying when they are on different filesystems.
func move(src, dst string) error {
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	st, err := lstat(src)
	if err != nil {
		return err
	}
	switch kindOf(st.Mode) {
	case kindDir:
		if err := os.Mkdir(dst, os.FileMode(st.Mode&0o777)); err != nil {
			return err
		}
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := move(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
	case kindFile:
		if err := copyFile(src, dst); err != nil {
			return err
		}
	case kindSymlink:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	default:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
	}
	return os.Remove(src)
}
