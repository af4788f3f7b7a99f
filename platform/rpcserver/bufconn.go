package rpcserver

import (
	"bufio"
	"net"
)

// readBufferSize is the read buffer of every accepted connection: two
// HTTP/2 frames of the default maximum size.
const readBufferSize = 32 << 10

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
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}, nil
}

// bufferedConn is a connection that reads through a buffer. Reads at least
// as large as the buffer bypass it.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes a TCP connection, which the HTTP/1 server does
// before closing one it rejects, so the client reads the response.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
