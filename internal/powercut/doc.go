// Package powercut is a FUSE filesystem for tests that cuts the power: the
// LazyFS idea (Jepsen), in Go on go-fuse.
//
// A test mounts it (Mount), runs the program under test with its data on the
// mount, then calls Cut: the filesystem freezes (every later operation fails
// with EIO), the test's kill function kills the program, the FUSE connection
// is aborted so that dirty pages the kernel still holds never arrive, the
// mount goes away, and Options.Dir is left holding what a disk would hold
// after a power loss. Mounting Options.Dir again starts the program on that.
//
// While mounted, every operation applies at once to a live copy of the tree
// (the program sees an ordinary POSIX filesystem); beside it the package
// keeps what is durable, POSIX-strictly:
//
//   - File data written by write(2), or by pages of a MAP_SHARED mapping
//     (which reach the filesystem as WRITE requests), becomes durable at the
//     next fsync or fdatasync of that file, by any descriptor.
//     msync(MS_SYNC) is such an fsync: the kernel writes the dirty pages
//     back, then sends FSYNC. Size changes (ftruncate, truncate, fallocate,
//     O_TRUNC) become durable at the same moment.
//   - A directory entry created, removed or renamed becomes durable when the
//     directory holding it is fsynced (FSYNCDIR). Fsyncing a new file also
//     makes durable the entry that created it, and those of new directories
//     above it, as on ext4, XFS and btrfs, where the creation is in the
//     journal transaction the fsync commits; with Options.StrictDirectories
//     it does not, as POSIX alone promises. A rename between two directories is durable
//     once both were fsynced after it; if only the target was, the file is
//     left under both names (as hard links of one file), and if only the
//     source was, under neither.
//   - Data fsynced into a file whose entry never became durable is lost with
//     the entry; an unlink that did not become durable brings the file back
//     with the content it had at its last fsync.
//   - Symlinks and special files are durable with their entry.
//   - Everything in Options.Dir when Mount is called counts as durable.
//
// Cut in Clean mode loses everything else. Harsh mode is a disk that wrote
// some things back before it lost power, reproducibly from Options.Seed:
// per file with unsynced data, each unsynced 4 KiB page survives with
// probability 1/2 and one unsynced write survives only as a prefix (a torn
// write); pages that survive past the durable size extend the file to them.
// Of the directory changes not yet durable, a random prefix in operation
// order survives. Surviving bytes have the content they had at the cut.
//
// SetCapacity makes the filesystem full at a given size: allocations past it
// fail with ENOSPC and statfs reports the capacity and what is free.
//
// # Not modelled
//
//   - Extended attributes and ACLs: the mount answers ENOTSUP.
//   - O_TMPFILE (EOPNOTSUPP), RENAME_WHITEOUT (EINVAL), fallocate's
//     COLLAPSE_RANGE, INSERT_RANGE and UNSHARE_RANGE (EOPNOTSUPP), reflink
//     ioctls. copy_file_range works, as the kernel's fallback of reads and
//     writes, which the model sees.
//   - Ownership and timestamps: a Cut leaves files owned by the test
//     process's user, with the time of the cut. Permissions are kept as they
//     were at the cut (a chmod is durable at once).
//   - File locks are the kernel's (flock and fcntl locks work, locally).
//   - fdatasync is fsync. A file's content is not ordered against its size:
//     both become durable at its fsync.
//   - A directory made durable in two places (a rename of it, durable in
//     its new parent only) appears once, at the first place in name order.
//   - Space is counted in 4 KiB pages of live file data, as a disk would
//     allocate them: writes and fallocate allocate, growing a file with
//     ftruncate does not, punching a hole or shrinking frees, a file frees
//     its pages when its last name and last open descriptor are gone.
//     Directories and metadata take no space, and the durable copy none.
//   - Stats count only what reached the filesystem: dirty pages the kernel
//     still held at the cut are lost without being counted.
//
// # Use
//
// Mounting needs root (the mount is made with mount(2): no fusermount or
// Debian package is needed), /dev/fuse and fusectl on
// /sys/fs/fuse/connections (Available mounts it when missing). Processes
// running as root, such as the test's children, can use the mount.
//
// Do not touch the mount through mmap from the process that mounted it: a
// page fault waits for a READ that process must serve, and a Go process
// with a thread stuck in a page fault cannot stop the world for its garbage
// collector, so the two deadlock. Run such code in a child process.
//
// While mounted, the content of Options.Dir lives in a work directory
// beside it (.powercut-<name>-*); Cut and Unmount put it back.
package powercut
