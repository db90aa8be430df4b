package main

import (
	"os"
	"strconv"
	"strings"
)

// fdStat is what a process holds open.
type fdStat struct {
	Total   int `json:"total"`
	Spool   int `json:"spool"`   // files under the spool directory
	Deleted int `json:"deleted"` // of those, files already removed
}

// openFDs classifies the descriptors pid holds open; Total is -1 if it
// cannot tell.
func openFDs(pid int, spoolDir string) fdStat {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fdStat{Total: -1}
	}
	st := fdStat{Total: len(entries)}
	for _, e := range entries {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(target, spoolDir+"/") {
			continue
		}
		st.Spool++
		if strings.HasSuffix(target, " (deleted)") {
			st.Deleted++
		}
	}
	return st
}
