# deploy/ci/go-builder.Dockerfile: CI's stand-in for the golang image, which
# no registry here can serve. The base is the local test image (Debian with CA
# certificates, from .ci/test-image); the Go toolchain is the machine's own
# /usr/local/go, and the CA bundle the machine's own, so that the go command
# in the build trusts what the machine's go command trusts on its way to the
# module proxy. .ci/app-image sends both as the build context.
ARG BASE
FROM ${BASE}
COPY go /usr/local/go
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /go
