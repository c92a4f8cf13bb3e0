//! Builds a site folder: `cargo run -p skychimp-site --example build_site -- SITE OUT [BASE_URL]`.
//! A thin command line over `skychimp_site::build`, for trying the builder by hand.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: build_site SITE_DIR OUT_DIR [BASE_URL]");
        return std::process::ExitCode::from(2);
    }
    let opts = skychimp_site::BuildOptions {
        site_dir: args[0].clone().into(),
        out_dir: args[1].clone().into(),
        base_url: args.get(2).cloned(),
    };
    match skychimp_site::build(&opts) {
        Ok(report) => {
            println!("{report:?}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
