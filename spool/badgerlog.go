package spool

import (
	"fmt"
	"log/slog"
	"strings"
)

// badgerLogger sends Badger's printf-style logs to slog.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelInfo, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	b.l.Log(nil, level, strings.TrimSpace(fmt.Sprintf(f, a...)), "source", "badger") //nolint:staticcheck // no context in Badger's logger
}
