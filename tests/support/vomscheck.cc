// Strict VOMS relying party for the proxyd test suite.
//
// Usage: vomscheck PROXYFILE   (trust dirs from X509_CERT_DIR, X509_VOMS_DIR)
// Verifies every VOMS AC of the proxy with libvomsapi (VERIFY_FULL minus
// VERIFY_TARGET) and prints, on success (exit 0):
//   OK
//   then per AC: VO, URI, ISSUER, HOLDER, FQAN*, GA*, NOTBEFORE, NOTAFTER, END
// on verification failure (exit 1):  FAIL <message> [code <n>]
// on usage or I/O errors (exit 2):   ERROR <text>
// Unlike voms-proxy-info it never falls back to unverified parsing.

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <voms/voms_api.h>

static int usage_error(const std::string &text) {
  std::cout << "ERROR " << text << std::endl;
  return 2;
}

static std::string getenv_str(const char *name) {
  const char *value = std::getenv(name);
  return value ? value : "";
}

int main(int argc, char **argv) {
  if (argc != 2)
    return usage_error("usage: vomscheck PROXYFILE");
  std::string cert_dir = getenv_str("X509_CERT_DIR");
  std::string voms_dir = getenv_str("X509_VOMS_DIR");
  if (cert_dir.empty() || voms_dir.empty())
    return usage_error("X509_CERT_DIR and X509_VOMS_DIR must be set");

  BIO *in = BIO_new_file(argv[1], "r");
  if (!in)
    return usage_error(std::string("cannot open ") + argv[1]);

  // Every CERTIFICATE block of the file, in order; PEM_read_bio_X509 skips
  // other blocks (the private key) on its own.
  STACK_OF(X509) *chain = sk_X509_new_null();
  X509 *cert;
  while ((cert = PEM_read_bio_X509(in, nullptr, nullptr, nullptr)) != nullptr)
    sk_X509_push(chain, cert);
  ERR_clear_error();  // the loop ends on a "no start line" error
  BIO_free(in);
  if (sk_X509_num(chain) == 0) {
    sk_X509_pop_free(chain, X509_free);
    return usage_error(std::string("no certificate in ") + argv[1]);
  }

  int rc;
  {
    vomsdata vd(voms_dir, cert_dir);
    vd.SetVerificationType(static_cast<verify_type>(VERIFY_FULL & ~VERIFY_TARGET));
    // The leaf stays in the chain, as voms-proxy-info does: the library
    // skips proxies when looking for the holder (the end-entity cert).
    if (vd.Retrieve(sk_X509_value(chain, 0), chain, RECURSE_CHAIN)) {
      std::cout << "OK\n";
      for (voms &v : vd.data) {
        std::cout << "VO " << v.voname << "\n"
                  << "URI " << v.uri << "\n"
                  << "ISSUER " << v.server << "\n"
                  << "HOLDER " << v.user << "\n";
        for (const std::string &fqan : v.fqan)
          std::cout << "FQAN " << fqan << "\n";
        for (const attributelist &list : v.GetAttributes())
          for (const attribute &a : list.attributes)
            std::cout << "GA " << a.name << "=" << a.value << " " << a.qualifier << "\n";
        std::cout << "NOTBEFORE " << v.date1 << "\n"
                  << "NOTAFTER " << v.date2 << "\n"
                  << "END\n";
      }
      rc = 0;
    } else {
      std::cout << "FAIL " << vd.ErrorMessage() << " [code " << static_cast<int>(vd.error)
                << "]\n";
      rc = 1;
    }
  }
  std::cout.flush();
  sk_X509_pop_free(chain, X509_free);
  return rc;
}
