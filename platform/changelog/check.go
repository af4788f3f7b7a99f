package changelog

import (
	"errors"
	"fmt"
)

// CheckResult is what Check found in one segment file.
type CheckResult struct {
	File          string
	Size          int64 // bytes in the file
	ValidBytes    int64 // bytes up to the end of the last good record
	Records       int64 // good records
	FirstRevision int64
	LastRevision  int64
	Torn          bool  // the file ends with a partial record, as a crash leaves
	Corrupt       error // damage a crash does not explain (a *CorruptError), or nil
}

// OK reports whether the file is whole.
func (r CheckResult) OK() bool { return !r.Torn && r.Corrupt == nil }

// Check reads a segment file and reports its records and any damage. It
// returns an error only when the file cannot be read at all.
func Check(fsys FS, path string) (CheckResult, error) {
	res := CheckResult{File: path}
	end, size, err := scanFile(fsys, path, func(payload []byte) error {
		c, err := decodeChange(payload)
		if err != nil {
			return err
		}
		if res.Records == 0 {
			res.FirstRevision = c.Revision
		}
		res.Records++
		res.LastRevision = c.Revision
		return nil
	})
	res.Size, res.ValidBytes = size, end
	var corrupt *CorruptError
	switch {
	case err == nil:
	case errors.Is(err, errTorn):
		res.Torn = true
	case errors.As(err, &corrupt):
		res.Corrupt = corrupt
	default:
		return res, err
	}
	return res, nil
}

// Repair cuts the file back to the end of its last good record, dropping a
// torn tail or everything from the first damaged record on. It returns the
// number of bytes dropped; a whole file is left alone.
func Repair(fsys FS, res CheckResult) (int64, error) {
	if res.OK() {
		return 0, nil
	}
	if res.ValidBytes < int64(headerSize) {
		return 0, fmt.Errorf("%s: the segment header itself is damaged; nothing can be kept", res.File)
	}
	if err := fsys.Truncate(res.File, res.ValidBytes); err != nil {
		return 0, fmt.Errorf("truncate %s: %w", res.File, err)
	}
	return res.Size - res.ValidBytes, nil
}
