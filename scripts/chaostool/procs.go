package main

import (
	"os"
	"strconv"
	"strings"
)

// fdStat is what a process holds open.
type fdStat struct {
	Total   int `json:"total"`
	Spool   int `json:"spool"`   // regular files under the spool directory
	Dirs    int `json:"dirs"`    // directories under it
	Deleted int `json:"deleted"` // of those, files already removed
	// Twice counts descriptors on a spool file that another descriptor
	// already holds, and Example names one such file.
	Twice   int    `json:"twice"`
	Example string `json:"twice_example,omitempty"`
}

// openFDs classifies the descriptors pid holds open; Total is -1 if it
// cannot tell. Directories are counted apart: Badger holds each
// database's directory open for its lock, and a directory is opened
// again, briefly, to sync a new name into it, so one may be held twice.
func openFDs(pid int, spoolDir string) fdStat {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fdStat{Total: -1}
	}
	st := fdStat{Total: len(entries)}
	held := map[string]bool{}
	for _, e := range entries {
		fd := dir + "/" + e.Name()
		target, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(target, spoolDir+"/") {
			continue
		}
		if info, err := os.Stat(fd); err == nil && info.IsDir() {
			st.Dirs++
			continue
		}
		st.Spool++
		if strings.HasSuffix(target, " (deleted)") {
			st.Deleted++
			continue
		}
		if held[target] {
			st.Twice++
			st.Example = target
		}
		held[target] = true
	}
	return st
}
