package rpcserver

import (
	"net"
	"sync"
)

// readBufferSize is the size of a connection's read buffer: two HTTP/2
// frames of the default maximum size.
const readBufferSize = 32 << 10

// readBuffers holds the read buffers of connections that hold no unread
// data, so that an idle connection costs none.
var readBuffers = sync.Pool{New: func() any {
	b := make([]byte, readBufferSize)
	return &b
}}

// bufferedListener hands out connections whose reads are buffered.
//
// The HTTP/2 server reads each frame straight from its connection, with one
// read for the 9-byte frame header and one for the payload, so a client that
// sends many small frames at once (concurrent unary calls, a pipelined
// stream) costs two system calls per frame. Behind a buffer, one read
// usually fetches every frame that has arrived.
type bufferedListener struct {
	net.Listener
}

func (l bufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &bufferedConn{Conn: c}, nil
}

// bufferedConn is a connection that reads through a buffer. It takes the
// buffer from readBuffers for a read that is smaller than it, and gives it
// back as soon as everything in it has been read: most connections are
// idle most of the time, blocked in a read with nothing buffered. Reads at
// least as large as the buffer bypass it. Like a net.Conn, it allows one
// Read at a time.
type bufferedConn struct {
	net.Conn
	buf  *[]byte // from readBuffers; nil when nothing is buffered
	r, w int     // (*buf)[r:w] is unread
	err  error   // returned by the connection with the buffered data, for the next Read
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.buf == nil {
		if err := c.err; err != nil {
			c.err = nil
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		if len(p) >= readBufferSize {
			return c.Conn.Read(p)
		}
		b := readBuffers.Get().(*[]byte)
		n, err := c.Conn.Read(*b)
		if n <= 0 {
			readBuffers.Put(b)
			return 0, err
		}
		c.buf, c.r, c.w, c.err = b, 0, n, err
	}
	n := copy(p, (*c.buf)[c.r:c.w])
	c.r += n
	if c.r == c.w {
		readBuffers.Put(c.buf)
		c.buf = nil
	}
	return n, nil
}

// CloseWrite half-closes a TCP connection, which the HTTP/1 server does
// before closing one it rejects, so the client reads the response.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
