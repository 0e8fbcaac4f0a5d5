# Dockerfile: a static pg-invalidator on distroless (no shell, runs as nonroot).
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t pg-invalidator .
#
# .git is not sent to the build (.dockerignore), so the version comes in as a
# build argument; `make image` passes it.
#
# The base images are build arguments too, for registries of your own and for
# machines without one: GO_IMAGE must have Go on PATH and reach a Go module
# proxy (or have the modules), RUNTIME_IMAGE needs CA certificates and a user
# called nonroot. CI builds with local stand-ins (.ci/smoke-image).

ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X main.version=${VERSION}" \
	-o /out/pg-invalidator ./cmd/pg-invalidator

# static-debian12 has CA certificates and tzdata, and a nonroot user (65532).
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/pg-invalidator /pg-invalidator
# The example rules; mount your own over it (docker-compose.yml does).
COPY rules.toml /etc/pg-invalidator/rules.toml
USER nonroot:nonroot
ENTRYPOINT ["/pg-invalidator"]
CMD ["run", "--config", "/etc/pg-invalidator/rules.toml"]
