package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// machine is what the numbers were measured on.
type machine struct {
	CPU          string  `json:"cpu"`
	LogicalCores int     `json:"logical_cores"`
	MemoryBytes  int64   `json:"memory_bytes"`
	GoVersion    string  `json:"go_version"`
	OS           string  `json:"os"`
	Kernel       string  `json:"kernel"`
	Redis        string  `json:"redis_version"`
	RedisAOF     string  `json:"redis_appendonly"`  // "yes" or "no", from CONFIG GET
	RedisFsync   string  `json:"redis_appendfsync"` // always, everysec or no
	RedisSave    string  `json:"redis_save"`        // RDB snapshot schedule, or "off"
	CPUBusy      float64 `json:"cpu_busy_at_start"` // share of all cores in use just before the run, from /proc/stat; -1 if unknown
	Date         string  `json:"date"`
	Commit       string  `json:"commit"`
	Dirty        bool    `json:"dirty"` // the working tree differs from the commit
}

// describeMachine reads the machine's description from /proc, the Go
// runtime, git and Redis. Fields it cannot read say "unknown" rather than
// failing the report.
func describeMachine(ctx context.Context, redis *redisConn) (machine, error) {
	m := machine{
		CPU:          "unknown",
		LogicalCores: runtime.NumCPU(),
		GoVersion:    runtime.Version(),
		OS:           runtime.GOOS + "/" + runtime.GOARCH,
		Kernel:       "unknown",
		Date:         time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Commit:       "unknown",
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		m.CPU = cpuModel(f)
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemoryBytes = memTotal(string(b))
	}
	m.CPUBusy = cpuBusy(ctx, time.Second)
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := gitOutput(ctx, "rev-parse", "--short", "HEAD"); err == nil {
		m.Commit = out
	}
	// --no-optional-locks: looking must not rewrite the index.
	if out, err := gitOutput(ctx, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"); err == nil {
		m.Dirty = out != ""
	}
	info, err := redis.info(ctx, "server")
	if err != nil {
		return m, err
	}
	m.Redis = info["redis_version"]
	m.RedisAOF, m.RedisFsync, m.RedisSave = "unknown", "unknown", "unknown"
	if v, ok := redis.config(ctx, "appendonly"); ok {
		m.RedisAOF = v
	} else if p, err := redis.info(ctx, "persistence"); err == nil {
		m.RedisAOF = map[string]string{"0": "no", "1": "yes"}[p["aof_enabled"]]
	}
	if v, ok := redis.config(ctx, "appendfsync"); ok {
		m.RedisFsync = v
	}
	if v, ok := redis.config(ctx, "save"); ok {
		m.RedisSave = cmp.Or(v, "off")
	}
	return m, nil
}

// busy reports whether other work was using more than a quarter of the
// machine when the report started.
func (m machine) busy() bool { return m.CPUBusy > 0.25 }

// cpuBusy samples /proc/stat twice, d apart, and returns the share of all
// cores that was not idle in between, or -1 if it cannot tell.
func cpuBusy(ctx context.Context, d time.Duration) float64 {
	idle0, total0, err := cpuTimes()
	if err != nil {
		return -1
	}
	sleep(ctx, d)
	idle1, total1, err := cpuTimes()
	if err != nil || total1 <= total0 {
		return -1
	}
	return 1 - float64(idle1-idle0)/float64(total1-total0)
}

func cpuTimes() (idle, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseCPUTimes(string(b))
}

// parseCPUTimes sums the aggregate "cpu" line of /proc/stat: idle counts
// idle and iowait.
func parseCPUTimes(stat string) (idle, total uint64, err error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", v, err)
		}
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return idle, total, nil
}

func gitOutput(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", args...).Output()
	return strings.TrimSpace(string(out)), err
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel(f *os.File) string {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// memTotal returns MemTotal from /proc/meminfo's text, in bytes, or 0.
func memTotal(meminfo string) int64 {
	for _, line := range strings.Split(meminfo, "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			return procKB(v)
		}
	}
	return 0
}

// procKB parses a /proc value such as "  24684028 kB" into bytes, or 0.
func procKB(v string) int64 {
	fields := strings.Fields(v)
	if len(fields) == 0 {
		return 0
	}
	n, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		return 0
	}
	if len(fields) > 1 && fields[1] == "kB" {
		n *= 1024
	}
	return n
}

// vmRSS returns the resident set size of process pid, in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if n := procKB(v); n > 0 {
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
