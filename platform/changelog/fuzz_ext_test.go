package changelog_test

import (
	"encoding/binary"
	"testing"

	"github.com/fluxkv/fluxkv/platform/changelog"
)

// FuzzCheck feeds arbitrary bytes to the segment reader through Check: it
// must never panic, and a hostile length prefix must be judged against the
// file's size before anything is allocated for it.
func FuzzCheck(f *testing.F) {
	header := []byte("FLUXAOF\n\x01\x00\x00\x00\x01\x00\x00\x00")
	huge := binary.LittleEndian.AppendUint32(append([]byte(nil), header...), 0xFFFFFFF0)
	f.Add([]byte{})
	f.Add(header)
	f.Add(append(append([]byte(nil), header...), 1, 0, 0, 0, 0, 0, 0, 0, 0))
	f.Add(append(huge, 0, 0, 0, 0))
	f.Add([]byte("FLUXAOF\n\x02\x00\x00\x00\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsys := newMemFS()
		fsys.setBytes("/f.aof", data)
		res, err := changelog.Check(fsys, "/f.aof")
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		if res.ValidBytes > int64(len(data)) || res.Size != int64(len(data)) {
			t.Fatalf("check of %d bytes: %+v", len(data), res)
		}
		if res.OK() && res.ValidBytes != res.Size {
			t.Fatalf("a whole file must be valid to its end: %+v", res)
		}
	})
}
