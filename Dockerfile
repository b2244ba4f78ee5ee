# Stock Debian 12 nginx with ngx_http_intermission_module.
#
#   docker build -t nginx-intermission .
#   docker run --rm -p 8080:8080 nginx-intermission
#
# The builder runs the same scripts as CI (scripts/install-deps, scripts/build), against
# Debian's nginx-dev, so the module matches the nginx of the final stage: both stages start
# from the same Debian image and take nginx from bookworm's packages (same version, same
# --with-compat flags). The image has no Rust: scripts/install-deps installs Debian's
# cargo-web and rustc-web (bookworm-security's Rust 1.96).

FROM debian:bookworm-slim AS build
WORKDIR /src
COPY . .
RUN scripts/install-deps && scripts/build

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/module/ngx_http_intermission_module.so /usr/lib/nginx/modules/
COPY nginx-conf/debian/mod-http-intermission.conf /usr/share/nginx/modules-available/
RUN ln -s /usr/share/nginx/modules-available/mod-http-intermission.conf \
          /etc/nginx/modules-enabled/50-mod-http-intermission.conf
COPY nginx-conf/debian/intermission.conf /etc/nginx/conf.d/intermission.conf
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
